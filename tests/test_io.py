import csv
import os
import stat
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pytest
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from PIL import Image

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import (
    IMAGE_SUFFIXES,
    atomic_write,
    labels_to_rle,
    list_image_files,
    pair_images_and_labels,
    read_image,
    read_labels,
    rle_decode,
    rle_encode,
    write_labels_tiff,
    write_rle_csv,
)

# ----------------------------------------------------------------------------- listing


def _touch(folder, *names):
    for name in names:
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")


def test_image_suffixes():
    assert IMAGE_SUFFIXES == (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")


def test_list_folder_skips_hidden_system_and_foreign_files(tmp_path):
    _touch(
        tmp_path,
        "b.png",
        "a.TIF",
        "c.tiff",
        "d.jpeg",
        "e.bmp",
        ".DS_Store",
        "._b.png",
        "Thumbs.db",
        "desktop.ini",
        "notes.txt",
        "model.pt",
        "sub/inner.png",
    )
    (tmp_path / "folder.png").mkdir()
    names = [p.name for p in list_image_files(tmp_path)]
    assert names == ["a.TIF", "b.png", "c.tiff", "d.jpeg", "e.bmp"]


def test_list_glob_recursive_and_single_file(tmp_path):
    _touch(tmp_path, "x/1.png", "x/y/2.png", "x/y/3.tif", "x/y/.hidden.png")
    recursive = list_image_files(tmp_path / "x" / "**" / "*.png")
    assert [p.name for p in recursive] == ["1.png", "2.png"]
    assert [p.name for p in list_image_files(str(tmp_path / "x" / "y" / "?.tif"))] == ["3.tif"]
    assert list_image_files(tmp_path / "x" / "1.png") == [tmp_path / "x" / "1.png"]


def test_list_errors_name_the_problem(tmp_path):
    with pytest.raises(NapariUnetError, match="does not exist") as info:
        list_image_files(tmp_path / "nope")
    assert "nope" in str(info.value)
    _touch(tmp_path, "empty/readme.txt")
    with pytest.raises(NapariUnetError, match=r"no image files \(PNG or TIFF\)"):
        list_image_files(tmp_path / "empty")
    with pytest.raises(NapariUnetError, match="no image files"):
        list_image_files(tmp_path / "*.png")
    with pytest.raises(NapariUnetError, match="not an image file"):
        list_image_files(tmp_path / "empty" / "readme.txt")


# ----------------------------------------------------------------------------- reading


def test_read_rgba_with_constant_alpha_returns_rgb(tmp_path):
    rgba = np.zeros((5, 7, 4), np.uint8)
    rgba[..., 0] = np.arange(7)
    rgba[..., 3] = 255
    iio.imwrite(tmp_path / "a.png", rgba)
    image = read_image(tmp_path / "a.png")
    assert image.shape == (5, 7, 3) and image.dtype == np.uint8
    np.testing.assert_array_equal(image, rgba[..., :3])


def test_read_rgba_with_real_alpha_keeps_four_channels(tmp_path):
    rgba = np.full((5, 7, 4), 200, np.uint8)
    rgba[0, 0, 3] = 0
    iio.imwrite(tmp_path / "a.png", rgba)
    np.testing.assert_array_equal(read_image(tmp_path / "a.png"), rgba)


def test_read_keeps_dtype_and_stacks(tmp_path):
    grey = (np.arange(35, dtype=np.uint16) * 1000).reshape(5, 7)
    iio.imwrite(tmp_path / "g.png", grey)
    out = read_image(tmp_path / "g.png")
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, grey)
    stack = np.random.default_rng(0).random((3, 6, 8)).astype(np.float32)
    tifffile.imwrite(tmp_path / "s.tif", stack, photometric="minisblack")
    np.testing.assert_array_equal(read_image(tmp_path / "s.tif"), stack)
    rgb = np.random.default_rng(1).integers(0, 255, (6, 8, 3), dtype=np.uint8)
    iio.imwrite(tmp_path / "c.jpg", rgb)
    assert read_image(tmp_path / "c.jpg").shape == (6, 8, 3)


@pytest.mark.parametrize(
    "name, content",
    [
        ("bad.png", b"\x89PNG\r\n\x1a\n" + b"x" * 40),
        ("bad.tif", b"II*\x00" + b"x" * 40),
        ("empty.png", b""),
        ("text.tiff", b"hello, not a tiff"),
    ],
)
def test_read_corrupt_file_raises_naming_it(tmp_path, name, content):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(NapariUnetError) as info:
        read_image(tmp_path / name)
    assert name in str(info.value)


def test_read_truncated_png_and_missing_file(tmp_path):
    iio.imwrite(
        tmp_path / "full.png", np.random.default_rng(0).integers(0, 255, (64, 64), dtype=np.uint8)
    )
    data = (tmp_path / "full.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(NapariUnetError, match="cut.png"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(NapariUnetError, match="no such file"):
        read_image(tmp_path / "missing.png")


def test_read_labels_dtypes(tmp_path):
    mask = np.zeros((4, 5), bool)
    mask[1:3, 1:3] = True
    tifffile.imwrite(tmp_path / "b.tif", mask)
    out = read_labels(tmp_path / "b.tif")
    assert out.dtype == np.uint8 and out.sum() == 4

    tifffile.imwrite(tmp_path / "f.tif", np.array([[0.0, 2.0], [3.0, 70000.0]], np.float32))
    out = read_labels(tmp_path / "f.tif")
    assert np.issubdtype(out.dtype, np.integer)
    assert out.tolist() == [[0, 2], [3, 70000]]

    tifffile.imwrite(tmp_path / "p.tif", np.array([[0.0, 0.5]], np.float32))
    with pytest.raises(NapariUnetError, match="non-integer"):
        read_labels(tmp_path / "p.tif")
    tifffile.imwrite(tmp_path / "n.tif", np.array([[0, -1]], np.int16))
    with pytest.raises(NapariUnetError, match="negative"):
        read_labels(tmp_path / "n.tif")


def test_read_labels_rgb(tmp_path):
    lab = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    iio.imwrite(tmp_path / "grey_rgb.png", np.stack([lab] * 3, axis=-1))
    np.testing.assert_array_equal(read_labels(tmp_path / "grey_rgb.png"), lab)
    colour = np.stack([lab, lab * 2, lab], axis=-1).astype(np.uint8)
    iio.imwrite(tmp_path / "colour.png", colour)
    with pytest.raises(NapariUnetError, match="colour.png.*differ"):
        read_labels(tmp_path / "colour.png")


def test_read_labels_palette_png_gives_indices(tmp_path):
    lab = np.array([[0, 1, 1], [2, 2, 0]], np.uint8)
    image = Image.fromarray(lab, mode="P")
    image.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * 759)
    image.save(tmp_path / "voc.png")
    np.testing.assert_array_equal(read_labels(tmp_path / "voc.png"), lab)


def test_read_real_dsb_pairs(dsb_small):
    shapes = set()
    for image_path, mask_path in dsb_small:
        image = read_image(image_path)
        labels = read_labels(mask_path)
        assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[-1] == 3
        assert labels.shape == image.shape[:2]
        np.testing.assert_array_equal(labels, tifffile.imread(mask_path))
        assert 15 <= len(np.unique(labels)) - 1 <= 40
        shapes.add(image.shape)
        rgb_equal = bool(
            (image[..., 0] == image[..., 1]).all() & (image[..., 1] == image[..., 2]).all()
        )
        assert rgb_equal == (image.shape[:2] == (256, 256))  # two grey, two colour
    assert len(shapes) == 2


# ----------------------------------------------------------------------------- pairing


def test_pair_by_stem_and_label_suffixes(tmp_path):
    images = [tmp_path / "img" / f"{s}.png" for s in ("a", "b", "c", "d", "e")]
    labels = [
        tmp_path / "lab" / "a.tif",
        tmp_path / "lab" / "b_masks.tif",
        tmp_path / "lab" / "c_labels.png",
        tmp_path / "lab" / "d_mask.tiff",
        tmp_path / "lab" / "zzz.tif",
    ]
    pairs, rest = pair_images_and_labels(images, labels)
    assert pairs == list(zip(images[:4], labels[:4], strict=True))
    assert rest == [images[4]]


def test_pair_exact_stem_wins_and_same_folder(tmp_path):
    pairs, _ = pair_images_and_labels(
        [tmp_path / "a.png"], [tmp_path / "l" / "a_mask.tif", tmp_path / "l" / "a.tif"]
    )
    assert pairs == [(tmp_path / "a.png", tmp_path / "l" / "a.tif")]
    same = [tmp_path / "a.png", tmp_path / "a_masks.png", tmp_path / "b.png"]
    pairs, rest = pair_images_and_labels(same, same)
    assert pairs == [(tmp_path / "a.png", tmp_path / "a_masks.png")]
    assert rest == [tmp_path / "b.png"]


def test_pair_errors(tmp_path):
    with pytest.raises(NapariUnetError, match="image stems are one, two.*label stems are x"):
        pair_images_and_labels([tmp_path / "one.png", tmp_path / "two.png"], [tmp_path / "x.tif"])
    with pytest.raises(NapariUnetError, match="two label files"):
        pair_images_and_labels([tmp_path / "a.png"], [tmp_path / "l/a.tif", tmp_path / "l/a.png"])


# ----------------------------------------------------------------------------- atomic write


def test_atomic_write_replaces_on_success(tmp_path):
    target = tmp_path / "new" / "out.bin"
    with atomic_write(target) as tmp:
        assert tmp.parent == target.parent
        assert tmp.name.startswith(".") and tmp.name.endswith(".tmp")
        assert tmp.exists() and not target.exists()
        tmp.write_bytes(b"payload")
    assert target.read_bytes() == b"payload"
    assert os.listdir(target.parent) == ["out.bin"]
    # Same permissions as a file made by open() (umask honoured, not mkstemp's 0600).
    reference = tmp_path / "reference"
    reference.write_bytes(b"")
    assert stat.S_IMODE(target.stat().st_mode) == stat.S_IMODE(reference.stat().st_mode)


def test_atomic_write_keeps_old_file_on_error(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="boom"):
        with atomic_write(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_write_unwritable_folder(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(NapariUnetError, match="cannot create folder") as info:
        with atomic_write(blocker / "sub" / "out.txt"):
            pass
    assert str(blocker) in str(info.value)


# ----------------------------------------------------------------------------- label TIFF


def test_write_labels_uint16_imagej_roundtrip(tmp_path):
    labels = np.zeros((20, 30), np.int64)
    labels[2:5, 3:9] = 1
    labels[10:15, 10:20] = 65535
    out = write_labels_tiff(tmp_path / "sub" / "l.tif", labels, pixel_size=(0.25, 0.5))
    assert out == tmp_path / "sub" / "l.tif"
    with tifffile.TiffFile(out) as tif:
        data = tif.asarray()
        assert tif.is_imagej
        assert tif.imagej_metadata["unit"] == "um"
        page = tif.pages[0]
        assert page.compression == tifffile.COMPRESSION.ADOBE_DEFLATE
        x_res = page.tags["XResolution"].value
        y_res = page.tags["YResolution"].value
        assert x_res[0] / x_res[1] == pytest.approx(2.0)  # 1 / 0.5 um
        assert y_res[0] / y_res[1] == pytest.approx(4.0)  # 1 / 0.25 um
    assert data.dtype == np.uint16
    np.testing.assert_array_equal(data, labels)


def test_write_labels_uint32_plain_tiff(tmp_path):
    labels = np.array([[0, 70000], [1, 4_000_000_000]], np.uint64)
    out = write_labels_tiff(tmp_path / "big.tif", labels, pixel_size=0.5)
    with tifffile.TiffFile(out) as tif:
        assert not tif.is_imagej
        assert tif.pages[0].tags["ResolutionUnit"].value == tifffile.RESUNIT.CENTIMETER
        data = tif.asarray()
    assert data.dtype == np.uint32
    np.testing.assert_array_equal(data, labels)


@pytest.mark.parametrize(
    "axes, shape", [(None, (3, 8, 9)), ("TYX", (4, 8, 9)), (None, (2, 3, 8, 9))]
)
def test_write_labels_stacks(tmp_path, axes, shape):
    labels = np.random.default_rng(0).integers(0, 300, shape).astype(np.int32)
    out = write_labels_tiff(tmp_path / "s.tif", labels, axes=axes)
    with tifffile.TiffFile(out) as tif:
        assert tif.is_imagej
        assert tif.series[0].axes == (axes or {3: "ZYX", 4: "TZYX"}[len(shape)])
    np.testing.assert_array_equal(tifffile.imread(out), labels)


def test_write_labels_bool_and_errors(tmp_path):
    out = write_labels_tiff(tmp_path / "m.tif", np.eye(4, dtype=bool))
    np.testing.assert_array_equal(tifffile.imread(out), np.eye(4))
    with pytest.raises(NapariUnetError, match="exists; pass overwrite=True"):
        write_labels_tiff(tmp_path / "m.tif", np.zeros((4, 4), np.uint8))
    write_labels_tiff(tmp_path / "m.tif", np.full((4, 4), 3, np.uint8), overwrite=True)
    assert tifffile.imread(tmp_path / "m.tif").max() == 3
    with pytest.raises(NapariUnetError, match="negative"):
        write_labels_tiff(tmp_path / "n.tif", np.array([[0, -2]]))
    with pytest.raises(NapariUnetError, match="non-integer"):
        write_labels_tiff(tmp_path / "f.tif", np.array([[0.0, 0.4]]))
    with pytest.raises(NapariUnetError, match="at least 2-D"):
        write_labels_tiff(tmp_path / "v.tif", np.arange(5))
    (tmp_path / "blocker").write_text("")
    with pytest.raises(NapariUnetError, match="blocker"):
        write_labels_tiff(tmp_path / "blocker" / "x.tif", np.zeros((2, 2), np.uint8))
    assert sorted(os.listdir(tmp_path)) == ["blocker", "m.tif"]


# ----------------------------------------------------------------------------- RLE


def test_rle_hand_examples():
    # Column-major, 1-based: column 0 holds pixels 1..3, column 1 holds 4..6.
    mask = np.array([[1, 0], [1, 1], [0, 1]], bool)
    assert rle_encode(mask) == "1 2 5 2"
    assert rle_encode(np.zeros((3, 2), bool)) == ""
    assert rle_encode(np.ones((3, 2), bool)) == "1 6"
    np.testing.assert_array_equal(rle_decode("1 2 5 2", (3, 2)), mask)
    assert not rle_decode("", (3, 2)).any()


def test_rle_decode_errors():
    with pytest.raises(NapariUnetError, match="pairs"):
        rle_decode("1 2 3", (3, 3))
    with pytest.raises(NapariUnetError, match="does not fit"):
        rle_decode("8 3", (3, 3))
    with pytest.raises(NapariUnetError, match="does not fit"):
        rle_decode("0 1", (3, 3))
    with pytest.raises(NapariUnetError, match="integers"):
        rle_decode("1 x", (3, 3))


@settings(max_examples=60, deadline=None)
@given(arrays(bool, st.tuples(st.integers(1, 9), st.integers(1, 9))))
def test_rle_roundtrip(mask):
    np.testing.assert_array_equal(rle_decode(rle_encode(mask), mask.shape), mask)


@settings(max_examples=60, deadline=None)
@given(
    arrays(np.uint8, st.tuples(st.integers(1, 8), st.integers(1, 8)), elements=st.integers(0, 5))
)
def test_labels_to_rle_matches_per_object_encoding(labels):
    expected = [rle_encode(labels == v) for v in np.unique(labels) if v != 0]
    assert labels_to_rle(labels) == expected


def test_write_rle_csv(tmp_path):
    a = np.zeros((3, 3), np.int32)
    a[0, 0] = 4
    a[1:, 2] = 2
    items = {"img_a": a, "img_empty": np.zeros((2, 2), np.uint8)}
    out = write_rle_csv(tmp_path / "sub.csv", items)
    with open(out, newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows == [
        ["ImageId", "EncodedPixels"],
        ["img_a", "8 2"],
        ["img_a", "1 1"],
        ["img_empty", ""],
    ]
    with pytest.raises(NapariUnetError, match="exists"):
        write_rle_csv(out, items)
    write_rle_csv(out, {"x": a}, overwrite=True)
    assert out.read_text().count("\n") == 3


def test_staged_outputs_appear_together_or_not_at_all(tmp_path):
    from napari_unet.core.io import staged_outputs

    out = tmp_path / "out"

    def run(fail: bool) -> None:
        with staged_outputs(out) as stage:
            stage(out / "a.tif").write_bytes(b"a")
            assert not (out / "a.tif").exists() or (out / "a.tif").read_bytes() != b"a"
            if fail:
                raise RuntimeError("the second image is unreadable")
            stage(out / "b.tif").write_bytes(b"b")

    with pytest.raises(RuntimeError):
        run(fail=True)
    assert not out.exists()  # created for nothing: removed again

    def stopped() -> int:  # what `predict` does on Ctrl-C: return from inside the block
        with staged_outputs(out) as stage:
            stage(out / "a.tif").write_bytes(b"finished")
            return 130

    assert stopped() == 130
    assert [p.name for p in out.iterdir()] == ["a.tif"]  # the finished image is kept
    run(fail=False)
    assert sorted(p.name for p in out.iterdir()) == ["a.tif", "b.tif"]
    assert (out / "a.tif").read_bytes() == b"a"  # replaced when the run ended


@pytest.mark.parametrize(
    "compression",
    ["lzw", "zlib", "zstd", "packbits", "lzma", ("jpeg", {"level": 95}), "png"],
)
def test_read_compressed_tiff_variants(tmp_path, compression):
    """TIFFs as microscopes, the Cell Tracking Challenge and Fiji write them."""
    import tifffile

    rng = np.random.default_rng(0)
    img = (rng.random((64, 80)) * 200).astype(np.uint8)
    kwargs = {}
    if isinstance(compression, tuple):
        compression, args = compression
        kwargs["compressionargs"] = args
    path = tmp_path / f"frame_{compression}.tif"
    tifffile.imwrite(path, img, compression=compression, **kwargs)
    out = read_image(path)
    assert out.shape == img.shape and out.dtype == np.uint8
    if compression == "jpeg":  # lossy
        assert np.abs(out.astype(int) - img).mean() < 8
    else:
        np.testing.assert_array_equal(out, img)


def test_missing_codec_says_what_to_install(tmp_path, monkeypatch):
    import tifffile

    path = tmp_path / "lzw.tif"
    tifffile.imwrite(path, np.ones((8, 8), np.uint8), compression="lzw")

    def no_codec(self, *a, **k):
        raise ValueError("<COMPRESSION.LZW: 5> requires the 'imagecodecs' package")

    monkeypatch.setattr(tifffile.TiffFile, "asarray", no_codec)
    with pytest.raises(NapariUnetError, match="pip install imagecodecs") as info:
        read_image(path)
    assert "truncated" not in str(info.value)


def test_read_real_gowt1_lzw_frame():
    root = Path(__file__).resolve().parents[2] / "shared/data/external/ctc_gowt1_nuclei/images"
    files = sorted(root.glob("*.tif")) if root.is_dir() else []
    if not files:
        pytest.skip(f"no Cell Tracking Challenge GOWT1 frames at {root}")
    img = read_image(files[0])
    assert img.shape == (1024, 1024) and img.dtype == np.uint8 and img.max() > 0
