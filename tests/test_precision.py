"""bfloat16 on the CPU: the "auto" choice, prediction and training in it, the options.

This machine may or may not compute bfloat16 natively; the choice is tested with the CPU
flags replaced, and bfloat16 itself is forced ("bf16"), emulated where it is not native
(slow there: the models and images are tiny).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from napari_unet.core import device as dev
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.metrics import match_objects
from napari_unet.core.predict import PRECISIONS, PredictConfig, infer_tiles, predict
from napari_unet.core.train import TrainConfig, train
from tests._synthetic import nuclei_image

CPU = torch.device("cpu")
TINY = dict(depth=2, base_channels=8, patch_size=64, batch_size=4, device="cpu")


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """One torch thread: these tiny networks gain nothing from more, and with two threads
    a training step stalled for 1.6 s (against 0.03 s) while other processes shared the
    two cores (OpenMP threads waiting on each other)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def flags(monkeypatch):
    """Set the CPU flags that :func:`cpu_bf16_native` sees; "auto" decided by them."""
    monkeypatch.delenv(dev.PRECISION_ENV, raising=False)

    def set_flags(*names):
        monkeypatch.setattr(dev, "cpu_flags", lambda: frozenset(names))

    return set_flags


def test_auto_is_bfloat16_only_where_the_cpu_computes_it_natively(flags, monkeypatch):
    for native in (("avx2", "amx_bf16", "amx_tile"), ("avx512f", "avx512_bf16")):
        flags(*native)
        assert dev.cpu_bf16_native()
        assert dev.resolve_precision("auto", CPU) == "bf16"
        assert dev.resolve_precision("fp32", CPU) == "fp32"  # switched off
        assert dev.precision_note("bf16", CPU) is None
    flags("avx2", "avx512f")  # AVX-512 without BF16, or only AVX2: emulated
    assert not dev.cpu_bf16_native()
    assert dev.resolve_precision("auto", CPU) == "fp32"
    assert dev.resolve_precision("bf16", CPU) == "bf16"  # forced, even though slow
    assert "emulated" in dev.precision_note("bf16", CPU)
    assert dev.precision_note("auto", CPU) is None
    assert dev.precision_note("fp32", CPU) is None
    flags("amx_bf16")
    monkeypatch.setattr(torch.backends.mkldnn, "is_available", lambda: False)
    assert dev.resolve_precision("auto", CPU) == "fp32"  # no oneDNN: nothing to run it


def test_the_environment_decides_what_auto_means(flags, monkeypatch):
    flags("amx_bf16")
    monkeypatch.setenv(dev.PRECISION_ENV, "fp32")
    assert dev.resolve_precision("auto", CPU) == "fp32"
    assert dev.resolve_precision("bf16", CPU) == "bf16"  # an explicit choice wins
    flags("avx2")
    monkeypatch.setenv(dev.PRECISION_ENV, "BF16")
    assert dev.resolve_precision("auto", CPU) == "bf16"
    monkeypatch.setenv(dev.PRECISION_ENV, "auto")
    assert dev.resolve_precision("auto", CPU) == "fp32"
    monkeypatch.setenv(dev.PRECISION_ENV, "fp16")
    with pytest.raises(NapariUnetError, match="NAPARI_UNET_PRECISION"):
        dev.resolve_precision("auto", CPU)


def test_gpus_keep_their_mixed_precision(flags):
    flags("amx_bf16")
    cuda, mps = torch.device("cuda"), torch.device("mps")  # no GPU needed to name one
    for precision in PRECISIONS:
        assert dev.resolve_precision(precision, cuda) == "amp"
        assert dev.resolve_precision(precision, cuda, amp=False) == "fp32"
        assert dev.resolve_precision(precision, mps) == "fp32"
    assert dev.precision_note("auto", cuda) is None
    assert "CPU only" in dev.precision_note("bf16", cuda)
    with pytest.raises(NapariUnetError, match="precision must be one of"):
        dev.resolve_precision("fp16", CPU)


def test_the_device_text_says_bfloat16():
    text = dev.describe_device(CPU, "bf16")
    assert text == f"CPU ({torch.get_num_threads()} threads), bfloat16"
    assert dev.describe_device(CPU, "fp32") == dev.describe_device(CPU)
    assert "bfloat16" not in dev.describe_device(CPU)


def test_configs_validate_the_precision():
    for cls in (PredictConfig, TrainConfig):
        assert cls().precision == "auto"
        for p in PRECISIONS:
            cls(precision=p).validate()
        with pytest.raises(NapariUnetError, match="precision must be one of"):
            cls(precision="fp16").validate()


@pytest.fixture(scope="module")
def fp32_model():
    """A tiny model trained briefly in float32 (it finds the synthetic nuclei)."""
    pairs = [nuclei_image(seed=s) for s in range(3)]
    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=40,
        lr=3e-3,
        val_fraction=0.0,
        tune_postprocessing=False,
        precision="fp32",
        **TINY,
    )
    return train([p[0] for p in pairs], [p[1] for p in pairs], cfg)


def test_float32_training_is_recorded(fp32_model):
    meta = fp32_model.bundle.meta
    assert meta["precision"] == "fp32"
    assert meta["train_config"]["precision"] == "fp32"
    assert "bfloat16" not in fp32_model.device and "bfloat16" not in meta["device"]


def test_bfloat16_prediction_agrees_with_float32(fp32_model):
    img, lab = nuclei_image(shape=(96, 128), seed=7)
    bundle = fp32_model.bundle
    tiles = dict(device="cpu", tile_size=64, overlap=16)  # 2 x 3 tiles, blended
    res = {
        p: predict(bundle, img, config=PredictConfig(**tiles, precision=p))
        for p in ("fp32", "bf16")
    }
    assert res["fp32"].settings["precision_used"] == "fp32"
    assert res["bf16"].settings["precision_used"] == "bf16"
    assert res["bf16"].settings["precision"] == "bf16"  # what was asked, as given
    n = int(res["fp32"].labels.max())
    assert n >= 6, "the float32 model should find most of the nuclei"
    m = match_objects(res["fp32"].labels, res["bf16"].labels, thresholds=(0.5,))
    assert m.f1(0.5) >= 0.99, (m.tp, m.fp, m.fn)
    diff = max(
        float(np.abs(res["bf16"].probabilities[k] - res["fp32"].probabilities[k]).max())
        for k in bundle.outputs
    )
    # bfloat16 keeps 8 bits of mantissa: it differs (it did run), but little
    assert 0 < diff < 0.05, diff
    for r in res.values():
        assert all(r.probabilities[k].dtype == np.float32 for k in bundle.outputs)
    slow = [note for note in res["bf16"].notes if "emulated" in note]
    assert bool(slow) == (not dev.cpu_bf16_native())
    assert not [note for note in res["fp32"].notes if "bfloat16" in note]


def test_tiles_of_the_folded_model_run_in_bfloat16(fp32_model):
    """infer_tiles (whole-image and dask prediction) on the BatchNorm-folded copy."""
    from napari_unet.core.data import Normalisation
    from napari_unet.core.fuse import fused_for_inference

    model = fused_for_inference(fp32_model.bundle.model).to(memory_format=torch.channels_last)
    seen = []
    hook = model.register_forward_hook(lambda mod, args, out: seen.append(out.dtype))
    img, _ = nuclei_image(shape=(64, 64), seed=3)
    tiles = [img[None], img[None, ::-1, :].copy()]
    norm = Normalisation(1.0, 99.8)
    lo, hi = norm.ranges(img[None])
    out = {p: infer_tiles(model, tiles, norm, lo, hi, CPU, precision=p) for p in ("fp32", "bf16")}
    hook.remove()
    assert seen == [torch.float32, torch.bfloat16]
    assert out["bf16"].dtype == np.float32 and out["bf16"].shape == out["fp32"].shape
    assert 0 < np.abs(out["bf16"] - out["fp32"]).max() < 0.05


def test_bfloat16_training_runs_and_is_recorded(monkeypatch):
    used = []
    autocast = dev.compute_autocast

    def spy(device, precision):
        used.append(precision)
        return autocast(device, precision)

    monkeypatch.setattr(dev, "compute_autocast", spy)
    img, lab = nuclei_image(shape=(64, 64), seed=1)
    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=3,
        val_fraction=0.0,
        tune_postprocessing=False,
        precision="bf16",
        **{**TINY, "batch_size": 2},
    )
    r = train([img], [lab], cfg)
    assert r.steps == 3 and r.stopped == "epochs"
    assert all(np.isfinite(h["train_loss"]) for h in r.history)
    assert r.bundle.meta["precision"] == "bf16"
    assert r.bundle.meta["train_config"]["precision"] == "bf16"
    assert r.device.endswith(", bfloat16") and r.bundle.meta["device"] == r.device
    assert used.count("bf16") >= 3  # each step's forward pass (and prediction's tiles)
    assert all(p.dtype == torch.float32 for p in r.bundle.model.parameters())
    slow = [note for note in r.notes if "emulated" in note]
    assert bool(slow) == (not dev.cpu_bf16_native())


def test_fine_tuning_decides_the_precision_on_this_machine(fp32_model):
    """A model's recorded "bf16" (another machine's choice) is not forced here."""
    import copy

    from napari_unet.core.finetune import FinetuneConfig, finetune

    bundle = fp32_model.bundle
    init = type(bundle)(copy.deepcopy(bundle.model), copy.deepcopy(bundle.meta))
    init.meta["train_config"]["precision"] = "bf16"
    img, lab = nuclei_image(shape=(64, 64), seed=2)
    sparse = lab + 1  # every pixel annotated: 1 background, 2.. nuclei
    res = finetune([img], [sparse], init, FinetuneConfig(steps=1, device="cpu", keep_better=False))
    assert res.bundle.meta["train_config"]["precision"] == "auto"
    assert res.bundle.meta["precision"] == "fp32"  # NAPARI_UNET_PRECISION=fp32 (conftest)


# ---------------------------------------------------------------- command line
def test_the_cli_option(tmp_path, capsys):
    import tifffile

    from napari_unet.cli import PRECISION_CHOICES, build_parser, main
    from napari_unet.core.checkpoint import load_checkpoint

    assert PRECISION_CHOICES == PRECISIONS
    parser = build_parser()
    for command in ("train", "predict"):
        base = [command, "--images", "i", "--out", "o"]
        base += ["--labels", "l"] if command == "train" else ["--model", "m"]
        assert parser.parse_args(base).precision is None  # the config's own (auto)
        assert parser.parse_args([*base, "--precision", "bf16"]).precision == "bf16"
        with pytest.raises(SystemExit) as exit_info:
            parser.parse_args([*base, "--precision", "fp16"])
        assert exit_info.value.code == 2
        assert "invalid choice: 'fp16'" in capsys.readouterr().err

    img, lab = nuclei_image(shape=(48, 48), seed=4)
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", img)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", lab.astype(np.uint16))
    model = tmp_path / "m.pt"
    args = ["--images", str(tmp_path / "images"), "--precision", "bf16", "--device", "cpu"]
    assert (
        main(
            ["train", *args, "--labels", str(tmp_path / "labels"), "--out", str(model)]
            + ["--depth", "2", "--base-channels", "4", "--patch-size", "32", "--batch-size", "2"]
            + ["--epochs", "1", "--steps-per-epoch", "2", "--val-fraction", "0"]
        )
        == 0
    )
    meta = load_checkpoint(model).meta
    assert meta["precision"] == "bf16" and meta["train_config"]["precision"] == "bf16"
    assert ", bfloat16" in "".join(capsys.readouterr())  # the device line

    assert main(["predict", *args, "--model", str(model), "--out", str(tmp_path / "p")]) == 0
    said = "".join(capsys.readouterr())
    if dev.cpu_bf16_native():
        assert "bfloat16 natively" in said
    else:  # the warning, once, not again for the image
        assert said.count("emulated") == 1, said
    assert (tmp_path / "p" / "a.tif").exists()


# ---------------------------------------------------------------- widgets
@pytest.mark.gui
def test_the_widgets_advanced_settings(make_napari_viewer):
    from tests._gui_helpers import open_widget

    viewer = make_napari_viewer()
    trainer = open_widget(viewer, "Train")
    items = [trainer.precision.itemText(i) for i in range(trainer.precision.count())]
    assert tuple(items) == PRECISIONS
    assert trainer.config_dict(tmp := "model.pt")["precision"] == "auto"
    trainer.precision.setCurrentText("fp32")
    cfg = TrainConfig.from_dict(trainer.config_dict(tmp))
    assert cfg.precision == "fp32"
    cfg.validate()

    predictor = open_widget(viewer, "Predict")
    assert predictor.predict_config()["precision"] == "auto"
    predictor.precision.setCurrentText("bf16")
    assert predictor.predict_config()["precision"] == "bf16"
