"""Built-in models: the index, safe loading, never written, by name in the CLI and demo.

Tiny real models are installed with :func:`install_model` into a folder named by
``NAPARI_UNET_MODELS_DIR``, as the package's own ``napari_unet/models`` would hold them;
one test checks the package's real index and every file it lists.
"""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import tifffile
import torch

from napari_unet.cli import main
from napari_unet.core import builtin
from napari_unet.core.builtin import (
    ENV_VAR,
    PACKAGE_MODELS_DIR,
    is_builtin,
    list_models,
    model_path,
    read_index,
    resolve_model,
)
from napari_unet.core.checkpoint import install_model, load_checkpoint, save_checkpoint
from napari_unet.core.errors import CheckpointError, NapariUnetError
from tests._gui_helpers import tiny_model_file
from tests._synthetic import nuclei_image

TITLE = "Tiny nuclei (built-in, for tests)"


@pytest.fixture
def models_dir(tmp_path, monkeypatch):
    """A models folder holding one tiny real 3-channel model, 'tiny', made the current one."""
    folder = tmp_path / "models"
    source = tiny_model_file(tmp_path / "source.pt", in_channels=3)
    install_model(source, "tiny", TITLE, "A tiny untrained UNet.", folder=folder)
    monkeypatch.setenv(ENV_VAR, str(folder))
    return folder


def state(path):
    """The raw tensors of a checkpoint file (loaded safely)."""
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def snapshot(path):
    return path.read_bytes(), path.stat().st_mtime_ns


# ---------------------------------------------------------------- the index
def test_no_index_or_an_empty_one_means_no_built_in_model(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert list_models() == []  # no builtin.json at all
    (tmp_path / "builtin.json").write_text("[]\n")
    assert list_models() == []
    (tmp_path / "builtin.json").write_text("")
    assert list_models() == []
    with pytest.raises(NapariUnetError, match="no built-in model is installed"):
        model_path("nuclei")
    with pytest.raises(CheckpointError, match="does not exist.*no built-in model is installed"):
        resolve_model("nuclei")


def test_install_lists_the_model_with_its_checksum_and_float16_weights(models_dir, tmp_path):
    (entry,) = list_models()
    assert (entry.name, entry.title, entry.channels, entry.file) == ("tiny", TITLE, 3, "tiny.pt")
    assert entry.path == models_dir / "tiny.pt"
    assert entry.sha256 == builtin.file_sha256(entry.path)
    raw = json.loads((models_dir / "builtin.json").read_text())
    assert raw == [entry.to_json()]
    assert set(raw[0]) == {"name", "title", "file", "channels", "description", "sha256"}
    floats = [v for v in state(entry.path).values() if v.is_floating_point()]
    assert floats and all(v.dtype == torch.float16 for v in floats)
    assert entry.size_bytes < 0.75 * (tmp_path / "source.pt").stat().st_size


def test_a_float16_model_loads_as_float32_and_predicts_as_the_original(models_dir, tmp_path):
    from napari_unet.core.predict import PredictConfig, predict

    half = load_checkpoint(model_path("tiny"))
    full = load_checkpoint(tmp_path / "source.pt")
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    assert half.meta["outputs"] == full.meta["outputs"]
    image, _ = nuclei_image((64, 64))
    rgb = np.stack([image, 0.5 * image, image], axis=-1)
    cfg = PredictConfig(split=False, device="cpu")
    a = predict(half, rgb, channel_axis=-1, config=cfg).probabilities["foreground"]
    b = predict(full, rgb, channel_axis=-1, config=cfg).probabilities["foreground"]
    assert np.abs(a - b).max() < 1e-2


def test_save_checkpoint_half_writes_float16(tmp_path):
    path = tiny_model_file(tmp_path / "m.pt")
    bundle = load_checkpoint(path)
    save_checkpoint(bundle, tmp_path / "half.pt", half=True)
    saved = state(tmp_path / "half.pt")
    assert {v.dtype for v in saved.values() if v.is_floating_point()} == {torch.float16}
    assert any(not v.is_floating_point() for v in saved.values())  # BatchNorm counters kept
    again = load_checkpoint(tmp_path / "half.pt")
    for (k, a), b in zip(
        bundle.model.state_dict().items(), again.model.state_dict().values(), strict=True
    ):
        assert b.dtype == a.dtype, k
        torch.testing.assert_close(b.float(), a.float(), atol=1e-3, rtol=1e-3)


def test_a_damaged_index_offers_nothing_and_crashes_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    (tmp_path / "builtin.json").write_text("{not json")
    with pytest.warns(UserWarning, match="cannot be read"):
        assert list_models() == []
    with pytest.raises(NapariUnetError, match="cannot be read"):
        read_index(strict=True)
    (tmp_path / "builtin.json").write_text(
        json.dumps([{"name": "gone", "file": "gone.pt", "channels": 3}])
    )
    with pytest.warns(UserWarning, match="missing"):
        assert list_models() == []
    with pytest.raises(NapariUnetError, match="gone.pt, is missing"):
        read_index(strict=True)
    (tmp_path / "builtin.json").write_text(
        json.dumps([{"name": "../x", "file": "x.pt", "channels": 3}])
    )
    with pytest.raises(NapariUnetError, match="'name' must be"):
        read_index(strict=True)
    (tmp_path / "x.pt").write_bytes(b"")
    (tmp_path / "builtin.json").write_text(
        json.dumps([{"name": "x", "file": "x.pt", "channels": 3, "replay": ["my_image"]}])
    )
    with pytest.raises(NapariUnetError, match="'replay' must be a list of shipped sample names"):
        read_index(strict=True)


def test_resolve_model_takes_a_name_or_a_path(models_dir, tmp_path):
    assert resolve_model("tiny") == models_dir / "tiny.pt"
    other = tiny_model_file(tmp_path / "mine.pt")
    assert resolve_model(str(other)) == other
    with pytest.raises(CheckpointError, match=r"not the name of a built-in model .*: tiny\)"):
        resolve_model("nuclei")
    with pytest.raises(NapariUnetError, match="no built-in model named 'nuclei'.*tiny"):
        model_path("nuclei")
    later = tmp_path / "later.pt"  # train --resume X --out X: X may not exist yet
    assert resolve_model(str(later), must_exist=False) == later


def test_a_damaged_built_in_file_is_refused_with_what_to_do(models_dir):
    path = model_path("tiny")
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF  # one byte inside the weights
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="'tiny'.*is damaged.*Reinstall"):
        load_checkpoint(path)


class _Payload:
    """Creates a file when unpickled by an unrestricted unpickler."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_a_built_in_file_with_code_in_it_is_never_executed(models_dir, tmp_path):
    # even listed with its own (matching) checksum, a file carrying a pickle payload is
    # refused by the restricted unpickler, never run
    marker = tmp_path / "pwned.txt"
    path = model_path("tiny")
    obj = {
        "format": "napari-unet",
        "format_version": 1,
        "meta": "{}",
        "state_dict": {},
        "x": _Payload(str(marker)),
    }
    torch.save(obj, path)
    index = models_dir / "builtin.json"
    raw = json.loads(index.read_text())
    raw[0]["sha256"] = builtin.file_sha256(path)
    index.write_text(json.dumps(raw))
    with pytest.raises(CheckpointError, match="not loaded"):
        load_checkpoint(path)
    assert not marker.exists()


def test_a_built_in_file_is_never_written(models_dir, tmp_path):
    path = model_path("tiny")
    assert is_builtin(path) and is_builtin(models_dir / "." / "tiny.pt")
    assert not is_builtin(tmp_path / "source.pt")
    before = snapshot(path)
    bundle = load_checkpoint(path)
    with pytest.raises(NapariUnetError, match="built-in model 'tiny'.*never overwritten"):
        save_checkpoint(bundle, path)
    assert snapshot(path) == before


def test_fine_tuning_from_a_built_in_model_leaves_its_file_unchanged(models_dir, tmp_path):
    from napari_unet.core.train import TrainConfig, train

    path = model_path("tiny")
    before = snapshot(path)
    init = load_checkpoint(path)
    weights = {k: v.clone() for k, v in init.model.state_dict().items()}
    image, labels = nuclei_image((96, 96))  # grey: repeated on the model's 3 channels
    cfg = TrainConfig(
        epochs=1,
        steps_per_epoch=4,
        patch_size=64,
        batch_size=2,
        device="cpu",
        val_fraction=0.0,
        checkpoint_path=str(tmp_path / "tuned.pt"),
    )
    result = train([image], [labels], cfg, init=init)
    assert result.steps == 4 and (tmp_path / "tuned.pt").is_file()
    assert snapshot(path) == before
    for k, v in init.model.state_dict().items():  # the loaded start model is not changed
        torch.testing.assert_close(v, weights[k])
    # training straight into the built-in file fails to save, and leaves it as it was
    cfg.checkpoint_path = str(path)
    result = train([image], [labels], cfg, init=init)
    assert result.save_error is not None and "never overwritten" in str(result.save_error)
    assert snapshot(path) == before


def test_the_package_index_and_every_model_it_lists():
    """The real napari_unet/models/builtin.json: each listed file loads safely and fits."""
    entries = read_index(PACKAGE_MODELS_DIR, strict=True)
    if not entries:
        pytest.skip(f"{PACKAGE_MODELS_DIR / 'builtin.json'} lists no built-in model yet")
    for entry in entries:
        assert entry.sha256, f"{entry.name}: the index gives no sha256"
        bundle = load_checkpoint(entry.path)  # verifies the checksum (package folder)
        assert bundle.in_channels == entry.channels, entry.name
        assert entry.object_diameter == bundle.meta.get("object_diameter"), entry.name
        assert entry.size_bytes < 40e6, f"{entry.name}: {entry.size_bytes} bytes"
        floats = [v for v in state(entry.path).values() if v.is_floating_point()]
        assert all(v.dtype == torch.float16 for v in floats), f"{entry.name}: not float16"


# ---------------------------------------------------------------- command line
def test_cli_models_lists_name_title_channels_size_and_diameter(models_dir, tmp_path, capsys):
    source = tiny_model_file(tmp_path / "sized.pt", in_channels=1)
    bundle = load_checkpoint(source)
    bundle.meta["object_diameter"] = 17.0
    save_checkpoint(bundle, source)
    install_model(source, "sized", "Sized nuclei", folder=models_dir, replay=["fluo_dense"])
    assert builtin.get_model("sized").replay == ("fluo_dense",)  # written to the index
    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert "tiny: " + TITLE in out and "3 channels" in out and (" MB" in out or " kB" in out)
    assert "sized: Sized nuclei" in out and "input grey" in out and "about 17 px" in out
    assert main(["models", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["tiny", "sized"]
    assert rows[1]["object_diameter"] == 17.0 and rows[0]["size_bytes"] > 0


def test_cli_models_without_any(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    assert main(["models"]) == 0
    assert "no built-in model is installed" in capsys.readouterr().out


def test_cli_predict_with_a_built_in_model_by_name(models_dir, tmp_path, capsys):
    images = tmp_path / "images"
    images.mkdir()
    image, _ = nuclei_image((64, 64))
    tifffile.imwrite(images / "a.tif", (image * 200).astype(np.uint8))
    out = tmp_path / "pred"
    assert main(["predict", "--model", "tiny", "--images", str(images), "--out", str(out)]) == 0
    assert "the built-in model 'tiny'" in capsys.readouterr().err
    assert tifffile.imread(out / "a.tif").shape == (64, 64)
    assert main(["predict", "--model", "nuclei", "--images", str(images), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "not the name of a built-in model (built-in models: tiny)" in err


def test_cli_export_bioimageio_takes_a_built_in_name(models_dir, tmp_path, capsys):
    out = tmp_path / "x.zip"
    assert main(["export-bioimageio", "nuclei", str(out)]) == 2
    assert "not the name of a built-in model (built-in models: tiny)" in capsys.readouterr().err
    assert not out.exists()


def _training_folders(tmp_path):
    images, labels = tmp_path / "timg", tmp_path / "tlab"
    images.mkdir()
    labels.mkdir()
    image, lab = nuclei_image((96, 96))
    tifffile.imwrite(images / "a.tif", (image * 200).astype(np.uint8))
    tifffile.imwrite(labels / "a.tif", lab.astype(np.uint16))
    return images, labels


def test_cli_train_resumes_from_a_built_in_name_and_never_writes_it(models_dir, tmp_path):
    images, labels = _training_folders(tmp_path)
    path = model_path("tiny")
    before = snapshot(path)
    base = [
        "train",
        "--images",
        str(images),
        "--labels",
        str(labels),
        "--epochs",
        "1",
        "--steps-per-epoch",
        "3",
        "--patch-size",
        "64",
        "--batch-size",
        "2",
        "--device",
        "cpu",
        "--val-fraction",
        "0",
    ]
    out = tmp_path / "tuned.pt"
    assert main([*base, "--out", str(out), "--resume", "tiny"]) == 0
    assert load_checkpoint(out).in_channels == 3  # the built-in model's architecture
    assert snapshot(path) == before
    # --out the built-in file itself: refused before any work, even with --overwrite
    for extra in (["--resume", "tiny"], ["--resume", str(path)], ["--overwrite"]):
        assert main([*base, "--out", str(path), *extra]) == 2
    assert snapshot(path) == before


@pytest.mark.slow
def test_headless_demo_predicts_with_the_built_in_model_first(models_dir, tmp_path):
    from napari_unet.demo import run_headless_demo

    path = model_path("tiny")
    before = snapshot(path)
    lines = []
    summary = run_headless_demo(tmp_path / "demo", minutes=0.05, log=lines.append)
    assert summary["builtin"]["name"] == "tiny"
    # its score is the built-in model's own on the held-out sample, before fine-tuning
    from napari_unet.core.metrics import evaluate
    from napari_unet.core.predict import predict
    from napari_unet.samples import load_samples

    held = summary["builtin"]["held_out"]
    [(_, image, truth)] = load_samples([held["name"]])
    ax = -1 if image.ndim == 3 else None
    labels = predict(load_checkpoint(path), image, channel_axis=ax).labels
    assert held["f1"] == round(evaluate([truth], [labels])["f1"], 3)
    assert any("built-in model 'tiny' as it is" in line for line in lines)
    assert any("fine-tuning the built-in model" in line for line in lines)
    assert load_checkpoint(tmp_path / "demo" / "model.pt").in_channels == 3
    assert snapshot(path) == before
    assert os.environ[ENV_VAR] == str(models_dir)


def test_the_shipped_nuclei_model_segments_a_held_back_sample_from_the_cli(tmp_path, monkeypatch):
    """The real built-in model, by name, on the sample image DSB never trained it on."""
    from napari_unet.core.metrics import evaluate
    from napari_unet.samples import load_samples

    if not any(e.name == "nuclei" for e in read_index(PACKAGE_MODELS_DIR, strict=False)):
        pytest.skip("the package ships no 'nuclei' model")
    monkeypatch.delenv(builtin.ENV_VAR, raising=False)  # the package's own models
    samples = {name: (image, labels) for name, image, labels in load_samples()}
    image, truth = samples["fluo_small"]  # a DSB 2018 held-back id (sample_data/SOURCE.md)
    images = tmp_path / "images"
    images.mkdir()
    tifffile.imwrite(images / "fluo_small.tif", image)
    out = tmp_path / "pred"
    assert main(["predict", "--model", "nuclei", "--images", str(images), "--out", str(out)]) == 0
    labels = tifffile.imread(out / "fluo_small.tif")
    assert labels.shape == truth.shape
    assert evaluate([truth], [labels])["f1"] > 0.8
