"""Bad input on the command line: one line on stderr, exit 2, no traceback, nothing written.

Each case builds its data under ``tmp_path``, snapshots every file there, runs
``napari_unet.cli.main`` in-process and checks the snapshot is unchanged.
"""

import os

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from _cli_helpers import SHAPE, expect_error, tiny_image, tiny_labels

from napari_unet.cli import main
from napari_unet.core.checkpoint import new_bundle, save_checkpoint
from napari_unet.core.model import UNetSpec


def _dataset(root, image=None, labels=None, name="a"):
    """Write images/<name>.png (or .tif for non-2D uint8) and labels/<name>.tif."""
    image = tiny_image() if image is None else image
    labels = tiny_labels() if labels is None else labels
    (root / "images").mkdir(parents=True, exist_ok=True)
    (root / "labels").mkdir(parents=True, exist_ok=True)
    if image.dtype == np.uint8 and image.ndim == 2:
        iio.imwrite(root / "images" / f"{name}.png", image)
    else:
        tifffile.imwrite(root / "images" / f"{name}.tif", image)
    tifffile.imwrite(root / "labels" / f"{name}.tif", labels)
    return root / "images", root / "labels"


def _train(images, labels, out):
    return ["train", "--images", images, "--labels", labels, "--out", out, "--epochs", "1"]


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


# ----------------------------------------------------------------------------- folders


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    expect_error(
        _train(tmp_path / "images", tmp_path / "labels", tmp_path / "m.pt"),
        tmp_path,
        capsys,
        "no image files",
        str(tmp_path / "images"),
    )


def test_folder_with_only_system_files(tmp_path, capsys, model):
    folder = tmp_path / "images"
    folder.mkdir()
    (folder / "Thumbs.db").write_bytes(b"\x00" * 64)
    (folder / ".DS_Store").write_bytes(b"Bud1" + b"\x00" * 60)
    expect_error(_train(folder, folder, tmp_path / "m.pt"), tmp_path, capsys, "no image files")
    expect_error(
        ["predict", "--model", model, "--images", folder, "--out", tmp_path / "pred"],
        tmp_path,
        capsys,
        "no image files",
    )


def test_images_without_matching_labels(tmp_path, capsys):
    images, labels = _dataset(tmp_path)
    (labels / "a.tif").rename(labels / "other.tif")
    expect_error(
        _train(images, labels, tmp_path / "m.pt"),
        tmp_path,
        capsys,
        "no image has a label file",
        "other",
    )


def test_evaluate_prediction_without_ground_truth(tmp_path, capsys):
    (tmp_path / "pred").mkdir()
    (tmp_path / "gt").mkdir()
    tifffile.imwrite(tmp_path / "pred" / "a.tif", tiny_labels())
    tifffile.imwrite(tmp_path / "pred" / "b.tif", tiny_labels())
    tifffile.imwrite(tmp_path / "gt" / "a.tif", tiny_labels())
    expect_error(
        ["evaluate", "--pred", tmp_path / "pred", "--gt", tmp_path / "gt"],
        tmp_path,
        capsys,
        "no ground truth",
        "b.tif",
    )


# ----------------------------------------------------------------------------- label values


@pytest.mark.parametrize(
    "labels,needles",
    [
        (np.zeros(SHAPE, np.uint16), ["all zero"]),
        (tiny_labels().astype(np.float32) * 0.5, ["non-integer"]),
        (tiny_labels().astype(np.int16) - 1, ["negative"]),
    ],
    ids=["all-zero", "float-fractions", "negative"],
)
def test_bad_label_values(tmp_path, capsys, labels, needles):
    images, label_dir = _dataset(tmp_path, labels=labels)
    expect_error(_train(images, label_dir, tmp_path / "m.pt"), tmp_path, capsys, *needles)


def test_image_with_nan(tmp_path, capsys):
    img = tiny_image().astype(np.float32)
    img[3, 5] = np.nan
    images, labels = _dataset(tmp_path, image=img)
    expect_error(_train(images, labels, tmp_path / "m.pt"), tmp_path, capsys, "NaN")


def test_image_with_nan_for_predict(tmp_path, capsys, model):
    img = tiny_image().astype(np.float32)
    img[3, 5] = np.inf
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", img)
    expect_error(
        ["predict", "--model", model, "--images", tmp_path / "images", "--out", tmp_path],
        tmp_path,
        capsys,
        "NaN or infinite",
    )


# ----------------------------------------------------------------------------- shapes


def test_image_and_labels_of_different_shapes(tmp_path, capsys):
    images, labels = _dataset(tmp_path, labels=tiny_labels((32, 40)))
    expect_error(
        _train(images, labels, tmp_path / "m.pt"),
        tmp_path,
        capsys,
        "(32, 32) does not match labels shape (32, 40)",
    )


def test_2d_labels_for_a_3d_stack(tmp_path, capsys):
    stack = np.stack([tiny_image()] * 10)  # (Z, Y, X) with Z = 10
    images, labels = _dataset(tmp_path, image=stack)
    expect_error(
        _train(images, labels, tmp_path / "m.pt"),
        tmp_path,
        capsys,
        "(10, 32, 32)",
        "2D labels",
    )


def test_3d_labels_for_a_2d_image(tmp_path, capsys):
    images, labels = _dataset(tmp_path, labels=tiny_labels((5, 32, 32)))
    expect_error(
        _train(images, labels, tmp_path / "m.pt"),
        tmp_path,
        capsys,
        "does not match labels shape (5, 32, 32)",
    )


# ----------------------------------------------------------------------------- broken files


def test_corrupt_png(tmp_path, capsys):
    images, labels = _dataset(tmp_path)
    good = (images / "a.png").read_bytes()
    (images / "b.png").write_bytes(good[: len(good) // 3])  # truncated
    tifffile.imwrite(labels / "b.tif", tiny_labels())
    (images / "c.png").write_bytes(b"this is not a png at all")
    tifffile.imwrite(labels / "c.tif", tiny_labels())
    err = expect_error(
        _train(images, labels, tmp_path / "m.pt"), tmp_path, capsys, "cannot read", "b.png"
    )
    assert "re-export it or remove it" in err


def test_truncated_model_for_predict(tmp_path, capsys, model):
    data = model.read_bytes()
    model.write_bytes(data[: len(data) // 2])
    _dataset(tmp_path)
    expect_error(
        [
            "predict",
            "--model",
            model,
            "--images",
            tmp_path / "images",
            "--out",
            tmp_path / "pred",
        ],
        tmp_path,
        capsys,
        "truncated",
        str(model),
    )


def test_resume_from_truncated_model(tmp_path, capsys, model):
    data = model.read_bytes()
    model.write_bytes(data[:100])
    images, labels = _dataset(tmp_path)
    argv = _train(images, labels, tmp_path / "new.pt") + ["--resume", model]
    expect_error(argv, tmp_path, capsys, "truncated", str(model))


# ----------------------------------------------------------------------------- outputs


def _not_a_folder(tmp_path):
    """A path whose 'folder' is a regular file: unwritable even for root."""
    blocker = tmp_path / "blocker"
    blocker.write_text("I am a file")
    return blocker


def test_export_path_under_a_file(tmp_path, capsys):
    _, labels = _dataset(tmp_path)
    blocker = _not_a_folder(tmp_path)
    expect_error(
        ["export-rle", "--labels", labels, "--out", blocker / "sub" / "rle.csv"],
        tmp_path,
        capsys,
        str(blocker),
    )
    expect_error(
        ["split", "--input", labels, "--out", blocker / "out"],
        tmp_path,
        capsys,
        "cannot create folder",
        str(blocker),
    )


def test_train_out_under_a_file_is_refused_before_training(tmp_path, capsys):
    images, labels = _dataset(tmp_path)
    blocker = _not_a_folder(tmp_path)
    expect_error(_train(images, labels, blocker / "m.pt"), tmp_path, capsys, "cannot", str(blocker))


def test_predict_out_under_a_file(tmp_path, capsys, model):
    _dataset(tmp_path)
    blocker = _not_a_folder(tmp_path)
    expect_error(
        ["predict", "--model", model, "--images", tmp_path / "images", "--out", blocker / "p"],
        tmp_path,
        capsys,
        "cannot create folder",
        str(blocker),
    )


@pytest.fixture
def read_only_folder(tmp_path):
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    if os.access(folder, os.W_OK):
        folder.chmod(0o755)
        pytest.skip("running as a user (root?) who can write to read-only folders")
    yield folder
    folder.chmod(0o755)


def test_read_only_export_folder(tmp_path, capsys, read_only_folder, model):
    images, labels = _dataset(tmp_path)
    expect_error(
        ["export-rle", "--labels", labels, "--out", read_only_folder / "rle.csv"],
        tmp_path,
        capsys,
        "cannot write",
        str(read_only_folder),
    )
    expect_error(
        ["predict", "--model", model, "--images", images, "--out", read_only_folder],
        tmp_path,
        capsys,
        "cannot write",
        str(read_only_folder),
    )
    expect_error(
        _train(images, labels, read_only_folder / "m.pt"),
        tmp_path,
        capsys,
        "cannot write",
        str(read_only_folder),
    )


def test_existing_outputs_are_never_overwritten(tmp_path, capsys, model):
    images, labels = _dataset(tmp_path)
    (tmp_path / "rle.csv").write_text("precious")
    expect_error(
        ["export-rle", "--labels", labels, "--out", tmp_path / "rle.csv"],
        tmp_path,
        capsys,
        "exists",
        "--overwrite",
    )
    (tmp_path / "pred").mkdir()
    (tmp_path / "pred" / "a.tif").write_text("precious")
    expect_error(
        ["predict", "--model", model, "--images", images, "--out", tmp_path / "pred"],
        tmp_path,
        capsys,
        "exist already",
        "a.tif",
    )
    expect_error(
        ["split", "--input", labels, "--out", tmp_path / "pred"],
        tmp_path,
        capsys,
        "exist already",
    )
    expect_error(_train(images, labels, model), tmp_path, capsys, f"{model} exists", "--overwrite")


# ----------------------------------------------------------------------------- odd names


def test_paths_with_spaces_and_non_ascii(tmp_path, capsys, model):
    root = tmp_path / "Données de l'été 2024" / "série 1"
    images, labels = _dataset(root, name="noyaux ß µm")
    out = root / "sortie à voir"

    def run(*argv):
        return main([str(a) for a in argv])

    capsys.readouterr()
    assert run("predict", "--model", model, "--images", images, "--out", out) == 0
    assert tifffile.imread(out / "noyaux ß µm.tif").shape == SHAPE
    assert run("split", "--input", labels, "--out", root / "découpé") == 0
    assert tifffile.imread(root / "découpé" / "noyaux ß µm.tif").max() == 2
    assert run("evaluate", "--pred", root / "découpé", "--gt", labels, "--compact") == 0
    assert '"f1"' in capsys.readouterr().out
    csv_path = root / "résumé rle.csv"
    assert run("export-rle", "--labels", labels, "--out", csv_path) == 0
    assert csv_path.read_text(encoding="utf-8").splitlines()[1].startswith("noyaux ß µm,")


# ----------------------------------------------------------------------------- more inputs


def test_constant_image(tmp_path, capsys):
    images, labels = _dataset(tmp_path, image=np.full(SHAPE, 80, np.uint8))
    expect_error(_train(images, labels, tmp_path / "m.pt"), tmp_path, capsys, "constant")


def test_rgb_image_for_a_grey_model(tmp_path, capsys, model):
    (tmp_path / "images").mkdir()
    rgb = np.stack([tiny_image(), tiny_image() // 2, tiny_image() // 3], axis=-1)
    rgb[..., 1] += 1  # a real colour image, not grey saved as RGB
    tifffile.imwrite(tmp_path / "images" / "a.tif", rgb)
    expect_error(
        ["predict", "--model", model, "--images", tmp_path / "images", "--out", tmp_path / "o"],
        tmp_path,
        capsys,
        "channel",
    )


def test_other_programs_and_newer_model_files(tmp_path, capsys, model):
    import torch

    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "a.tif", tiny_image())
    foreign = tmp_path / "resnet.pt"
    torch.save({"state_dict": {"conv.weight": torch.zeros(2, 2)}}, foreign)
    newer = tmp_path / "newer.pt"
    payload = torch.load(model, weights_only=True)
    payload["format_version"] = 99
    torch.save(payload, newer)
    for path, needle in ((foreign, "not a napari-unet model"), (newer, "newer")):
        expect_error(
            ["predict", "--model", path, "--images", tmp_path / "images", "--out", tmp_path / "o"],
            tmp_path,
            capsys,
            needle,
        )


def test_images_smaller_than_the_network_are_predicted(tmp_path, capsys, model):
    (tmp_path / "images").mkdir()
    tifffile.imwrite(tmp_path / "images" / "tiny.tif", np.arange(15, dtype=np.uint8).reshape(5, 3))
    tifffile.imwrite(tmp_path / "images" / "flat.tif", np.full((40, 40), 9, np.uint16))
    out = tmp_path / "o"
    assert main(["predict", "--model", str(model), "--images", str(tmp_path / "images"),
                 "--out", str(out)]) == 0  # fmt: skip
    assert tifffile.imread(out / "tiny.tif").shape == (5, 3)
    assert tifffile.imread(out / "flat.tif").shape == (40, 40)


def test_more_than_65535_objects_stay_exact(tmp_path, capsys):
    # 72,900 separate 2x2 squares (a one-pixel gap around each)
    labels = np.zeros((810, 810), np.uint32)
    ids = np.arange(1, 270 * 270 + 1, dtype=np.uint32).reshape(270, 270)
    for dy in (0, 1):
        for dx in (0, 1):
            labels[dy::3, dx::3] = ids
    (tmp_path / "in").mkdir()
    tifffile.imwrite(tmp_path / "in" / "many.tif", labels)
    argv = ["split", "--input", tmp_path / "in", "--out", tmp_path / "out", "--min-size", "1"]
    assert main([str(a) for a in argv]) == 0
    back = tifffile.imread(tmp_path / "out" / "many.tif")
    assert back.dtype == np.uint32
    assert np.unique(back[back > 0]).size == 270 * 270
    np.testing.assert_array_equal(back > 0, labels > 0)
    assert main(["evaluate", "--pred", str(tmp_path / "out"), "--gt", str(tmp_path / "in")]) == 0


def test_negative_split_depth(tmp_path, capsys, model):
    images, _ = _dataset(tmp_path)
    argv = ["predict", "--model", model, "--images", images, "--out", tmp_path / "o", "--h", "-1"]
    expect_error(argv, tmp_path, capsys, "--h", "positive")


def test_unknown_polarity_in_a_config_file(tmp_path, capsys):
    images, labels = _dataset(tmp_path)
    (tmp_path / "cfg.json").write_text('{"polarity": "invert"}')
    argv = [*_train(images, labels, tmp_path / "m.pt"), "--config", tmp_path / "cfg.json"]
    expect_error(argv, tmp_path, capsys, "polarity", "auto")


def test_split_depth_zero_means_markers_by_distance(tmp_path, capsys, model):
    images, _ = _dataset(tmp_path)
    out_h, out_d = tmp_path / "h0", tmp_path / "d"
    base = ["predict", "--model", str(model), "--images", str(images), "--threshold", "0.3"]
    assert main([*base, "--out", str(out_h), "--h", "0", "--min-distance", "3"]) == 0
    assert main([*base, "--out", str(out_d), "--min-distance", "3"]) == 0
    np.testing.assert_array_equal(
        tifffile.imread(out_h / "a.tif"), tifffile.imread(out_d / "a.tif")
    )


@pytest.mark.parametrize("value", ["big", "0", "-3", "nan", "inf"])
def test_bad_object_diameter(tmp_path, capsys, model, value):
    images, labels = _dataset(tmp_path)
    argv = ["predict", "--model", model, "--images", images, "--out", tmp_path / "o"]
    expect_error([*argv, "--diameter", value], tmp_path, capsys, "--diameter", "'auto'")
    argv = ["split", "--input", labels, "--out", tmp_path / "o", "--diameter", value]
    expect_error(argv, tmp_path, capsys, "--diameter", "'auto'")


def test_split_has_no_diameter_off(tmp_path, capsys):
    _, labels = _dataset(tmp_path)
    argv = ["split", "--input", labels, "--out", tmp_path / "o", "--diameter", "off"]
    expect_error(argv, tmp_path, capsys, "--diameter", "'auto'")


@pytest.mark.parametrize("value", ["-0.5", "1", "nan"])
def test_ema_out_of_range(tmp_path, capsys, value):
    images, labels = _dataset(tmp_path)
    argv = [*_train(images, labels, tmp_path / "m.pt"), "--ema", value]
    expect_error(argv, tmp_path, capsys, "ema must be in", "0 = off")


@pytest.mark.parametrize("value", ["-1", "5", "nan"])
def test_sample_by_loss_out_of_range(tmp_path, capsys, value):
    images, labels = _dataset(tmp_path)
    argv = [*_train(images, labels, tmp_path / "m.pt"), "--sample-by-loss", value]
    expect_error(argv, tmp_path, capsys, "--sample-by-loss", "between 0")


@pytest.mark.parametrize("value", ["-1", "101", "nan"])
def test_interface_weight_out_of_range(tmp_path, capsys, value):
    images, labels = _dataset(tmp_path)
    argv = [*_train(images, labels, tmp_path / "m.pt"), "--interface-weight", value]
    expect_error(argv, tmp_path, capsys, "--interface-weight", "between 0")


def test_predict_with_flips_writes_other_probabilities(tmp_path, capsys, model):
    images, _ = _dataset(tmp_path)
    base = ["predict", "--model", str(model), "--images", str(images), "--save-probabilities"]
    assert main([*base, "--out", str(tmp_path / "plain")]) == 0
    assert main([*base, "--out", str(tmp_path / "flips"), "--flips"]) == 0
    plain = tifffile.imread(tmp_path / "plain" / "a_probabilities.tif")
    flips = tifffile.imread(tmp_path / "flips" / "a_probabilities.tif")
    assert flips.shape == plain.shape and np.abs(flips - plain).max() > 1e-4
    assert tifffile.imread(tmp_path / "flips" / "a.tif").shape == plain.shape[-2:]


@pytest.mark.parametrize("value", ["-0.1", "1.5", "nan"])
def test_zoom_out_of_range(tmp_path, capsys, value):
    images, labels = _dataset(tmp_path)
    argv = [*_train(images, labels, tmp_path / "m.pt"), "--zoom", value]
    expect_error(argv, tmp_path, capsys, "zoom must be between", "0 (off)")


@pytest.mark.parametrize("value", ["-1", "6"])
def test_contact_gap_out_of_range(tmp_path, capsys, value):
    images, labels = _dataset(tmp_path)
    argv = [*_train(images, labels, tmp_path / "m.pt"), "--contact-gap", value]
    expect_error(argv, tmp_path, capsys, "--contact-gap must be", "0 (off)")


def test_train_out_that_is_a_folder_is_refused_before_training(tmp_path, capsys):
    images, labels = _dataset(tmp_path)
    (tmp_path / "models").mkdir()
    argv = _train(images, labels, tmp_path / "models") + ["--overwrite"]
    expect_error(argv, tmp_path, capsys, "is a folder", "model.pt")


def test_no_model_saved_is_said_and_the_old_file_kept(tmp_path, capsys):
    images, labels = _dataset(tmp_path)
    old = tmp_path / "old.pt"
    old.write_bytes(b"an earlier model")
    argv = _train(images, labels, old) + ["--overwrite", "--lr", "1e30", "--patch-size", "32"]
    argv += ["--depth", "2", "--base-channels", "4", "--batch-size", "2"]
    code = main([str(a) for a in argv])
    err = capsys.readouterr().err
    assert code == 2
    assert "no model was saved" in err and "NaN or infinite" in err and "left as it was" in err
    assert "saved to" not in err
    assert old.read_bytes() == b"an earlier model"


def test_export_rle_refuses_a_folder_and_two_files_of_one_id(tmp_path, capsys):
    (tmp_path / "lab").mkdir()
    tifffile.imwrite(tmp_path / "lab" / "a.tif", tiny_labels())
    (tmp_path / "out").mkdir()
    argv = ["export-rle", "--labels", tmp_path / "lab", "--out", tmp_path / "out", "--overwrite"]
    expect_error(argv, tmp_path, capsys, "is a folder")
    iio.imwrite(tmp_path / "lab" / "a.png", tiny_labels().astype(np.uint8))
    argv = ["export-rle", "--labels", tmp_path / "lab", "--out", tmp_path / "x.csv"]
    expect_error(argv, tmp_path, capsys, "a.png", "a.tif")


def test_outputs_never_collide_or_replace_inputs(tmp_path, capsys, model):
    d = tmp_path / "d"
    d.mkdir()
    tifffile.imwrite(d / "a.tif", tiny_image())
    # predicting a folder into itself would replace the input images with labels
    argv = ["predict", "--model", model, "--images", d, "--out", d, "--overwrite"]
    expect_error(argv, tmp_path, capsys, "would replace the input a.tif")
    # a.png and a.tif would both become a.tif
    iio.imwrite(d / "a.png", tiny_image())
    for cmd in (["predict", "--model", model, "--images", d], ["split", "--input", d]):
        expect_error(cmd + ["--out", tmp_path / "o"], tmp_path, capsys, "a.png", "a.tif")


def test_a_glob_through_a_symlink_loop_reads_each_file_once(tmp_path):
    from napari_unet.core.io import list_image_files

    loop = tmp_path / "loop"
    loop.mkdir()
    iio.imwrite(loop / "a.png", tiny_image())
    (loop / "sub").symlink_to(loop)  # loop/sub/sub/... is loop again
    found = list_image_files(str(loop / "**" / "*.png"))
    assert [p.name for p in found] == ["a.png"]


def test_a_replaced_read_only_file_stays_read_only(tmp_path):
    from napari_unet.core.io import write_labels_tiff

    path = tmp_path / "labels.tif"
    write_labels_tiff(path, tiny_labels())
    path.chmod(0o444)
    write_labels_tiff(path, tiny_labels() * 2, overwrite=True)
    assert (path.stat().st_mode & 0o777) == 0o444
    assert tifffile.imread(path).max() == 4


def test_an_unreadable_image_says_permission_denied(tmp_path, capsys, model, monkeypatch):
    from napari_unet.core import io as io_module

    d = tmp_path / "d"
    d.mkdir()
    iio.imwrite(d / "a.png", tiny_image())
    real_access = os.access

    def no_read(path, mode):  # as for a chmod 000 file (root would read it anyway)
        return False if os.fspath(path).endswith("a.png") else real_access(path, mode)

    monkeypatch.setattr(io_module.os, "access", no_read)
    argv = ["predict", "--model", model, "--images", d, "--out", tmp_path / "o"]
    expect_error(argv, tmp_path, capsys, "permission denied", "a.png")


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--overlap", "1000", "--tile-size", "128"], "--overlap must be"),
        (["--tile-size", "-64"], "--tile-size must be at least 16"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--channel-axis", "abc"], "--channel-axis must be"),
        (["--channel-axis", "5"], "--channel-axis 5 does not exist"),
        (["--threshold", "2"], "--threshold must be between 0 and 1"),
        (["--threshold", "nan"], "--threshold must be between 0 and 1"),
    ],
)
def test_predict_options_out_of_range(tmp_path, capsys, model, extra, needle):
    images, _ = _dataset(tmp_path)
    argv = ["predict", "--model", model, "--images", images, "--out", tmp_path / "o", *extra]
    expect_error(argv, tmp_path, capsys, needle)


@pytest.mark.parametrize(
    "extra,needle",
    [
        (["--steps-per-epoch", "-3"], "--steps-per-epoch must be at least 1"),
        (["--minutes", "inf"], "--minutes must be a positive number"),
        (["--seed", "-1"], "--seed must be a whole number"),
        (["--batch-size", "0"], "--batch-size must be at least 1"),
        (["--lr", "inf"], "--lr must be a positive, finite number"),
    ],
)
def test_train_options_out_of_range(tmp_path, capsys, extra, needle):
    images, labels = _dataset(tmp_path)
    argv = _train(images, labels, tmp_path / "m.pt")
    if "--minutes" in extra:
        argv.remove("--epochs")
        argv.remove("1")
    expect_error(argv + extra, tmp_path, capsys, needle)


@pytest.mark.parametrize("value", ["2", "nan", "0"])
def test_split_threshold_out_of_range(tmp_path, capsys, value):
    tifffile.imwrite(tmp_path / "p.tif", np.full((16, 16), 0.9, np.float32))
    argv = ["split", "--input", tmp_path / "p.tif", "--out", tmp_path / "o", "--threshold", value]
    expect_error(argv, tmp_path, capsys, "--threshold must be between 0 and 1")


def test_ids_file_that_is_not_utf8(tmp_path, capsys, model):
    images, _ = _dataset(tmp_path)
    (tmp_path / "ids.txt").write_bytes(b"\xff\xfe\x00a\n")
    argv = ["predict", "--model", model, "--images", images, "--out", tmp_path / "o"]
    expect_error(argv + ["--ids-file", tmp_path / "ids.txt"], tmp_path, capsys, "not UTF-8")


@pytest.mark.parametrize(
    "edit,needle",
    [
        (lambda meta: meta.pop("outputs"), "'outputs'"),
        (lambda meta: meta.update(outputs=["a", "b", "c"]), "'outputs'"),
        (lambda meta: meta.update(normalisation={"low": "x"}), "'normalisation'"),
        (lambda meta: meta.update(normalisation={"low": 50, "high": 10}), "'normalisation'"),
        (lambda meta: meta.update(normalisation={"polarity": "upside"}), "'normalisation'"),
    ],
)
def test_model_with_damaged_metadata(tmp_path, capsys, model, edit, needle):
    import json

    import torch

    payload = torch.load(model, weights_only=True)
    meta = json.loads(payload["meta"])
    edit(meta)
    payload["meta"] = json.dumps(meta)
    torch.save(payload, model)
    images, _ = _dataset(tmp_path)
    argv = ["predict", "--model", model, "--images", images, "--out", tmp_path / "o"]
    expect_error(argv, tmp_path, capsys, "metadata is damaged", needle)


def test_resume_says_which_architecture_options_it_ignores(tmp_path, capsys, model):
    images, labels = _dataset(tmp_path)
    argv = _train(images, labels, tmp_path / "m2.pt") + ["--resume", model, "--depth", "3"]
    argv += ["--steps-per-epoch", "1", "--patch-size", "32", "--batch-size", "2"]
    assert main([str(a) for a in argv]) == 0
    assert "--depth 3 ignored: --resume continues" in capsys.readouterr().err


def test_an_unreadable_second_image_leaves_no_output(tmp_path, capsys, model):
    images, _ = _dataset(tmp_path)
    (images / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")  # sorted after a.png
    out = tmp_path / "o"
    argv = ["predict", "--model", model, "--images", images, "--out", out, "--measure"]
    assert main([str(a) for a in argv]) == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert last.startswith("napari-unet: error: cannot read") and "b.png" in last
    assert not out.exists()  # not a.tif alone, which a rerun would refuse as "exists"
    (images / "b.png").unlink()
    assert main([str(a) for a in argv]) == 0  # the rerun needs no --overwrite
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "measurements.csv"]


def test_split_on_a_full_disk_leaves_no_folder(tmp_path, capsys, monkeypatch):
    import errno

    from napari_unet.core import io as io_module

    tifffile.imwrite(tmp_path / "m.tif", tiny_labels())

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fsync", full)
    argv = ["split", "--input", tmp_path / "m.tif", "--out", tmp_path / "o"]
    expect_error(argv, tmp_path, capsys, "is full")
    assert not (tmp_path / "o").exists()


def test_a_lock_that_cannot_be_written_is_not_left_behind(tmp_path, monkeypatch):
    import errno

    from napari_unet.core import io as io_module
    from napari_unet.core.errors import NapariUnetError
    from napari_unet.core.io import file_lock

    def full(fd, *args, **kwargs):
        os.close(fd)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io_module.os, "fdopen", full)
    with pytest.raises(NapariUnetError, match="disk is full"):
        with file_lock(tmp_path / "m.pt"):
            pass
    assert list(tmp_path.iterdir()) == []  # no empty m.pt.lock to block the next run


def test_sigterm_stops_training_like_ctrl_c(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    images, labels = _dataset(tmp_path)
    out = tmp_path / "m.pt"
    argv = [sys.executable, "-m", "napari_unet", "train", "--images", images, "--labels"]
    argv += [labels, "--out", out, "--minutes", "5", "--patch-size", "32", "--batch-size", "2"]
    argv += ["--depth", "2", "--base-channels", "4", "--steps-per-epoch", "5"]
    proc = subprocess.Popen([str(a) for a in argv], stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "m.pt.lock"
    end = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < end:
        time.sleep(0.2)
    time.sleep(8)  # importing torch, reading, a few steps
    proc.send_signal(signal.SIGTERM)  # what timeout, kill and SLURM send
    _, err = proc.communicate(timeout=300)
    assert proc.returncode in (0, 2), err  # stopped cleanly, not killed (143)
    assert "stopping after the current step" in err
    assert not lock.exists()


def _predict_file(tmp_path, model, name, write):
    d = tmp_path / "in"
    d.mkdir(exist_ok=True)
    write(d / name)
    out = tmp_path / "out"
    return ["predict", "--model", model, "--images", d / name, "--out", out], out


def test_a_last_axis_of_two_is_channels_never_a_sliver_image(tmp_path, capsys, model):
    rng = np.random.default_rng(0)
    grey_alpha = (rng.random((64, 64, 2)) * 255).astype(np.uint8)  # alpha not constant
    argv, out = _predict_file(tmp_path, model, "ga.png", lambda p: iio.imwrite(p, grey_alpha))
    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert "read with 2 channels on axis 2" in err and "2 channels but the model" in err
    assert not out.exists()


def test_channels_of_an_imagej_hyperstack_come_from_its_axes(tmp_path, capsys, model):
    stack = np.random.default_rng(0).integers(0, 255, (2, 3, 1, 40, 48), dtype=np.uint8)

    def write(p):  # T, Z, C of one channel: tifffile squeezes C away, ZYX stays
        tifffile.imwrite(p, stack, imagej=True, metadata={"axes": "TZCYX"})

    argv, out = _predict_file(tmp_path, model, "h.tif", write)
    assert main([str(a) for a in argv]) == 0
    assert tifffile.imread(out / "h.tif").shape == (2, 3, 40, 48)  # planes, no channel
    two = np.concatenate([stack, stack], axis=2)  # now 2 channels on axis 2
    tifffile.imwrite(tmp_path / "in" / "h.tif", two, imagej=True, metadata={"axes": "TZCYX"})
    assert main([str(a) for a in argv] + ["--overwrite"]) == 2
    err = capsys.readouterr().err
    assert "the file's axes TZCYX" in err and "2 channels but the model" in err


def test_ome_tiff_output_name_and_multi_series_note(tmp_path, capsys, model):
    image = tiny_image()
    argv, out = _predict_file(
        tmp_path, model, "x.ome.tif", lambda p: tifffile.imwrite(p, image, ome=True)
    )
    assert main([str(a) for a in argv]) == 0
    assert [p.name for p in out.iterdir()] == ["x.tif"]  # a plain TIFF, not named OME

    def two_series(p):
        with tifffile.TiffWriter(p) as w:
            w.write(image)
            w.write(image[:16])

    argv, out = _predict_file(tmp_path, model, "m.tif", two_series)
    assert main([str(a) for a in argv]) == 0
    assert "holds 2 images (series); the first is predicted" in capsys.readouterr().err


def test_split_refuses_a_uint8_probability_map_as_labels(tmp_path, capsys):
    yy, xx = np.mgrid[:64, :64]
    blob = np.clip(255 - ((yy - 32) ** 2 + (xx - 32) ** 2), 0, 255).astype(np.uint8)
    tifffile.imwrite(tmp_path / "p.tif", blob)  # a probability map scaled to 0-255
    argv = ["split", "--input", tmp_path / "p.tif", "--out", tmp_path / "o"]
    expect_error(argv, tmp_path, capsys, "looks like a probability or intensity image")
    tifffile.imwrite(tmp_path / "l.tif", tiny_labels())  # real labels still split
    argv = ["split", "--input", tmp_path / "l.tif", "--out", tmp_path / "o"]
    assert main([str(a) for a in argv]) == 0


def test_the_cli_takes_its_choices_from_the_core():
    from napari_unet.cli import build_parser
    from napari_unet.core.options import DEVICE_CHOICES, PRECISIONS, SPLIT_METHODS

    actions = {
        (a.dest, tuple(a.choices))
        for sub in build_parser()._subparsers._group_actions
        for parser in sub.choices.values()
        for a in parser._actions
        if a.choices
    }
    assert ("device", DEVICE_CHOICES) in actions and ("precision", PRECISIONS) in actions
    assert ("split_method", SPLIT_METHODS) in actions
