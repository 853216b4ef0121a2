"""Regressions found by ``bench/hostile_inputs.py`` (issue 24): each case in seconds.

Every case runs ``napari_unet.cli.main`` in-process on files under ``tmp_path``:
refusals are one line on stderr with exit 2 and leave every file as it was; accepted
inputs write what they should, with a note where something was assumed.
"""

import os
import signal

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from _cli_helpers import expect_error, snapshot, tiny_image, tiny_labels

from napari_unet.cli import main
from napari_unet.core.checkpoint import new_bundle, save_checkpoint
from napari_unet.core.model import UNetSpec

XFF = os.fsdecode(b"\xff")  # a byte that is not UTF-8, as Python names it


@pytest.fixture
def model(tmp_path):
    """A tiny untrained grey model file (predicting with it takes milliseconds)."""
    bundle = new_bundle(
        UNetSpec(in_channels=1, out_channels=1, depth=2, base_channels=4),
        {
            "outputs": ["foreground"],
            "normalisation": {"mode": "percentile", "low": 1, "high": 99.8},
        },
    )
    return save_checkpoint(bundle, tmp_path / "model.pt")


def _run(argv, capsys):
    capsys.readouterr()
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def _predict(tmp_path, model, name, array, *extra, **kw):
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    tifffile.imwrite(d / name, array, **kw)
    return ["predict", "--model", model, "--images", d / name, "--out", tmp_path / "out", *extra]


# ----------------------------------------------------------------------------- channel axes


def test_a_64x64x300_tiff_without_axes_is_planes_as_stored_with_a_note(tmp_path, capsys, model):
    stack = np.random.default_rng(0).integers(0, 65535, (64, 64, 300), dtype=np.uint16)
    argv = _predict(tmp_path, model, "x.tif", stack)
    code, err = _run(argv, capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "out" / "x.tif").shape == (64, 64, 300)
    assert "does not say what its axes are: predicted as 64 planes of 64 x 300 pixels" in err
    assert "--channel-axis -1" in err  # how to say otherwise
    # taken at its word, the last axis holds 300 channels: a grey model refuses them
    argv = [*argv[:-1], tmp_path / "out2", "--channel-axis", "-1"]
    expect_error(argv, tmp_path, capsys, "300 channels")


def test_training_on_such_a_tiff_says_so_too(tmp_path, capsys, monkeypatch):
    from napari_unet.core import train as train_module
    from napari_unet.core.errors import NapariUnetError

    def stop_here(*args, **kwargs):  # the note comes before training: no need to train
        raise NapariUnetError("stopped by the test")

    monkeypatch.setattr(train_module, "iter_train", stop_here)
    for name in ("images", "labels"):
        (tmp_path / name).mkdir()
    stack = np.random.default_rng(0).integers(0, 255, (40, 40, 90), dtype=np.uint8)
    tifffile.imwrite(tmp_path / "images" / "a.tif", stack)
    tifffile.imwrite(tmp_path / "labels" / "a.tif", (stack > 200).astype(np.uint16))
    argv = ["train", "--images", tmp_path / "images", "--labels", tmp_path / "labels"]
    code, err = _run(argv + ["--out", tmp_path / "m.pt"], capsys)
    assert code == 2 and "stopped by the test" in err
    assert "trained as 40 planes of 40 x 90 pixels" in err and "save the stack" in err


def test_an_ordinary_z_stack_gets_no_note(tmp_path, capsys, model):
    code, err = _run(_predict(tmp_path, model, "z.tif", np.stack([tiny_image()] * 5)), capsys)
    assert code == 0 and "does not say what its axes are" not in err, err
    assert "labelled in 3D across 5 z-slices (ZYX)" in err  # says how it was read


def test_a_last_axis_of_1_or_up_to_8_is_channels(tmp_path, capsys, model):
    one = tiny_image()[..., None]
    code, err = _run(_predict(tmp_path, model, "one.tif", one, photometric="minisblack"), capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "out" / "one.tif").shape == (32, 32)  # not 32 slivers
    five = np.random.default_rng(0).integers(0, 255, (64, 64, 5), dtype=np.uint8)
    argv = _predict(tmp_path, model, "five.tif", five)
    argv[-1] = tmp_path / "out5"
    code, err = _run(argv, capsys)  # never 64 slivers 5 pixels wide
    assert code == 2 and "5 channels but the model" in err, err
    assert "read with 5 channels on axis 2" in err  # the note says what was assumed
    assert not (tmp_path / "out5").exists()


def test_a_complex_image_is_refused(tmp_path, capsys, model):
    argv = _predict(tmp_path, model, "c.tif", tiny_image().astype(np.complex64))
    expect_error(argv, tmp_path, capsys, "complex numbers")


# ----------------------------------------------------------------------------- file names


@pytest.fixture
def odd_names(tmp_path):
    """images/{a,img_\\xff}.png and labels/{a,img_\\xff}.tif; skips where names must be UTF-8."""
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    try:
        iio.imwrite(images / f"img_{XFF}.png", tiny_image())
    except (OSError, UnicodeError) as exc:  # macOS, Windows: such names do not exist
        pytest.skip(f"this file system refuses names that are not UTF-8: {exc}")
    iio.imwrite(images / "a.png", tiny_image())
    tifffile.imwrite(labels / f"img_{XFF}.tif", tiny_labels())
    tifffile.imwrite(labels / "a.tif", tiny_labels())
    return images, labels


def test_file_names_that_are_not_utf8(tmp_path, capsys, model, odd_names):
    images, labels = odd_names
    # per-image outputs keep the input's name bytes, so they pair with it again
    code, err = _run(
        ["predict", "--model", model, "--images", images, "--out", tmp_path / "p"], capsys
    )
    assert code == 0, err
    assert sorted(os.listdir(tmp_path / "p")) == ["a.tif", f"img_{XFF}.tif"]
    code, err = _run(["split", "--input", labels, "--out", tmp_path / "s"], capsys)
    assert code == 0 and sorted(os.listdir(tmp_path / "s")) == ["a.tif", f"img_{XFF}.tif"]
    code, err = _run(["export-rois", "--labels", labels, "--out", tmp_path / "r"], capsys)
    assert code == 0 and f"img_{XFF}_rois.zip" in os.listdir(tmp_path / "r")
    # a CSV holds UTF-8 text: the name is written with a \xff escape, and a note says so
    csv = tmp_path / "m.csv"
    code, err = _run(["measure", "--labels", labels, "--images", images, "--out", csv], capsys)
    assert code == 0, err
    assert "not valid UTF-8" in err
    text = csv.read_text(encoding="utf-8")
    assert "img_\\xff," in text and "\n" + "a," in text
    rle = tmp_path / "r.csv"
    code, err = _run(["export-rle", "--labels", labels, "--out", rle], capsys)
    assert code == 0 and "not valid UTF-8" in err
    assert "img_\\xff," in rle.read_text(encoding="utf-8")


# ----------------------------------------------------------------------------- outputs


def test_train_and_export_rle_never_write_over_an_input(tmp_path, capsys):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir()
    labels.mkdir()
    iio.imwrite(images / "a.png", tiny_image())
    tifffile.imwrite(labels / "a.tif", tiny_labels())
    for out in (labels / "a.tif", images / "a.png"):
        argv = ["train", "--images", images, "--labels", labels, "--out", out, "--overwrite"]
        expect_error(argv + ["--epochs", "1"], tmp_path, capsys, "is one of the training")
    link = tmp_path / "link.pt"
    link.symlink_to(labels / "a.tif")
    argv = ["train", "--images", images, "--labels", labels, "--out", link, "--overwrite"]
    expect_error(argv, tmp_path, capsys, "is one of the training")
    argv = ["export-rle", "--labels", labels, "--out", labels / "a.tif", "--overwrite"]
    expect_error(argv, tmp_path, capsys, "is one of the label images")


def test_a_symlink_loop_as_model_or_resume_is_named(tmp_path, capsys, model):
    work = tmp_path / "work"  # the files checked for changes (the loop cannot be read)
    images, labels = work / "images", work / "labels"
    images.mkdir(parents=True)
    labels.mkdir()
    iio.imwrite(images / "a.png", tiny_image())
    tifffile.imwrite(labels / "a.tif", tiny_labels())
    loop = tmp_path / "loop.pt"
    loop.symlink_to(loop)
    argv = ["train", "--images", images, "--labels", labels, "--out", work / "m.pt"]
    expect_error(argv + ["--resume", loop], work, capsys, "loop")
    argv = ["predict", "--model", loop, "--images", images, "--out", work / "o"]
    expect_error(argv, work, capsys, "symbolic link")
    argv = ["predict", "--model", images, "--images", images, "--out", work / "o"]
    expect_error(argv, work, capsys, "is a folder, not a model file")


def test_unreadable_model_ids_file_and_folder_say_permission_denied(
    tmp_path, capsys, model, monkeypatch
):
    from pathlib import Path

    d = tmp_path / "in"
    d.mkdir()
    iio.imwrite(d / "a.png", tiny_image())
    argv = ["predict", "--model", model, "--images", d, "--out", tmp_path / "o"]
    real_access, real_read_text = os.access, Path.read_text

    def no_access(name):  # as for chmod 000 (root would read it anyway)
        return lambda p, mode: False if os.fspath(p).endswith(name) else real_access(p, mode)

    monkeypatch.setattr(os, "access", no_access("model.pt"))
    expect_error(argv, tmp_path, capsys, "cannot read the model file", "permission denied")
    monkeypatch.setattr(os, "access", no_access(os.sep + "in"))
    expect_error(argv, tmp_path, capsys, "cannot read the folder", "permission denied")
    monkeypatch.setattr(os, "access", real_access)
    ids = tmp_path / "ids.txt"
    ids.write_text("a\n")

    def read_text(self, *args, **kwargs):
        if self.name == "ids.txt":
            raise PermissionError(13, "Permission denied", str(self))
        return real_read_text(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", read_text)
    expect_error(argv + ["--ids-file", ids], tmp_path, capsys, "cannot read the ids file")


def test_probabilities_never_collide_nor_overwrite(tmp_path, capsys, model):
    d = tmp_path / "in"
    d.mkdir()
    iio.imwrite(d / "a.png", tiny_image())
    iio.imwrite(d / "a_probabilities.png", tiny_image())  # its labels: a_probabilities.tif
    argv = ["predict", "--model", model, "--images", d, "--out", tmp_path / "o"]
    expect_error(argv + ["--save-probabilities"], tmp_path, capsys, "would both be written")
    (d / "a_probabilities.png").unlink()
    out = tmp_path / "o"
    out.mkdir()
    (out / "a_probabilities.tif").write_bytes(b"an earlier run's")
    expect_error(argv + ["--save-probabilities"], tmp_path, capsys, "exist already")
    code, err = _run(argv + ["--save-probabilities", "--overwrite"], capsys)
    assert code == 0 and tifffile.imread(out / "a_probabilities.tif").dtype == np.float32


def test_measure_refuses_two_label_files_of_one_name(tmp_path, capsys):
    labels = tmp_path / "labels"
    labels.mkdir()
    tifffile.imwrite(labels / "a.tif", tiny_labels())
    iio.imwrite(labels / "a.png", tiny_labels(dtype=np.uint8))
    argv = ["measure", "--labels", labels, "--out", tmp_path / "t.csv"]
    expect_error(argv, tmp_path, capsys, "a.png and a.tif would both be image 'a'")


def test_measure_refuses_an_image_with_nan(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a_labels.tif", tiny_labels())
    image = tiny_image().astype(np.float32)
    image[3, 3] = np.nan
    tifffile.imwrite(tmp_path / "a.tif", image)
    argv = ["measure", "--labels", tmp_path / "a_labels.tif", "--images", tmp_path / "a.tif"]
    expect_error(argv + ["--out", tmp_path / "t.csv"], tmp_path, capsys, "NaN or infinite")


def test_split_float_inputs(tmp_path, capsys):
    def split(name, array):
        tifffile.imwrite(tmp_path / name, array)
        return ["split", "--input", tmp_path / name, "--out", tmp_path / f"o_{name}"]

    prob = np.zeros((32, 32), np.float32)
    prob[4:12, 4:12] = 0.9
    nan = prob.copy()
    nan[0, 0] = np.nan
    expect_error(split("nan.tif", nan), tmp_path, capsys, "NaN or infinite")
    expect_error(split("wide.tif", prob * 7.3), tmp_path, capsys, "neither a probability")
    # float labels (whole numbers) are labels, not probabilities above 1
    code, err = _run(split("flab.tif", tiny_labels().astype(np.float32)), capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "o_flab.tif" / "flab.tif").max() == 2


# ----------------------------------------------------------------------------- option ranges


def _train_argv(tmp_path):
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.mkdir(exist_ok=True)
    labels.mkdir(exist_ok=True)
    iio.imwrite(images / "a.png", tiny_image())
    tifffile.imwrite(labels / "a.tif", tiny_labels())
    return ["train", "--images", images, "--labels", labels, "--out", tmp_path / "m.pt"]


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--patch-size", "1000000000000"], "--patch-size must be at most 4096"),
        (["--batch-size", "1000000000000"], "--batch-size must be at most 1024"),
        (["--base-channels", "1000000000000"], "--base-channels must be at most 256"),
        (["--border-weight", "-1"], "--border-weight must be between 0 (off) and 100"),
        (["--border-weight", "nan"], "--border-weight must be between 0 (off) and 100"),
        (["--lr", "1e308"], "--lr must be a number that 32-bit floats hold"),
    ],
)
def test_train_options_beyond_what_can_work(tmp_path, capsys, extra, needle):
    expect_error(_train_argv(tmp_path) + extra, tmp_path, capsys, needle)


def test_a_config_setting_beyond_what_can_work_is_named_as_a_setting(tmp_path, capsys):
    (tmp_path / "cfg.json").write_text('{"border_weight": -5}')
    argv = _train_argv(tmp_path) + ["--config", tmp_path / "cfg.json"]
    expect_error(argv, tmp_path, capsys, "border_weight must be between")


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["split", "--smooth", "1e308"], "--smooth must be from 0 (no smoothing) to 100"),
        (["measure", "--pixel-size", "1e308"], "--pixel-size must be from 1e-09 to 1e+09"),
        (["demo", "--headless", "--minutes", "0"], "--minutes must be a positive number"),
        (["demo", "--headless", "--minutes", "nan"], "--minutes must be a positive number"),
    ],
)
def test_other_options_beyond_what_can_work(tmp_path, capsys, argv, needle):
    tifffile.imwrite(tmp_path / "a.tif", tiny_labels())
    io_args = {
        "split": ["--input", tmp_path / "a.tif", "--out", tmp_path / "o"],
        "measure": ["--labels", tmp_path / "a.tif", "--out", tmp_path / "t.csv"],
        "demo": ["--out", tmp_path / "demo"],
    }[argv[0]]
    expect_error(argv[:1] + io_args + argv[1:], tmp_path, capsys, needle)


def test_split_with_a_huge_min_distance_works(tmp_path, capsys):
    tifffile.imwrite(tmp_path / "a.tif", tiny_labels())
    argv = ["split", "--input", tmp_path / "a.tif", "--out", tmp_path / "o"]
    code, err = _run(argv + ["--min-distance", "1000000000000"], capsys)
    assert code == 0, err
    assert tifffile.imread(tmp_path / "o" / "a.tif").max() == 2


# ----------------------------------------------------------------------------- signals


def test_sigterm_outside_training_stops_like_ctrl_c(tmp_path, capsys, monkeypatch):
    """SIGTERM (timeout, kill, SLURM) while splitting: exit 143, nothing half-written."""
    from napari_unet.core import io as io_module

    d = tmp_path / "in"
    d.mkdir()
    for name in "ab":
        tifffile.imwrite(d / f"{name}.tif", tiny_labels())
    real_read = io_module.read_image

    def read_then_terminate(path):
        if str(path).endswith("b.tif"):
            os.kill(os.getpid(), signal.SIGTERM)
        return real_read(path)

    monkeypatch.setattr(io_module, "read_image", read_then_terminate)
    handler = signal.getsignal(signal.SIGTERM)
    before = snapshot(tmp_path)
    code, err = _run(["split", "--input", d, "--out", tmp_path / "o"], capsys)
    assert code == 143 and "napari-unet: terminated" in err, err
    assert snapshot(tmp_path) == before  # a.tif was staged, then rolled back
    assert signal.getsignal(signal.SIGTERM) is handler  # the caller's handler is back
