"""The napari writers and the folder export: files read back identical."""

import numpy as np
import pytest
import tifffile

from napari_unet._writer import export_labels, write_labels, write_labels_folder
from napari_unet.core.errors import NapariUnetError


@pytest.fixture
def labels():
    rng = np.random.default_rng(0)
    out = np.zeros((3, 40, 50), dtype=np.int32)
    out[:, 5:15, 5:20] = 1
    out[1, 20:35, 10:40] = 2
    out[2, 25:30, 30:45] = rng.integers(3, 300, size=(5, 15))
    return out


def test_single_layer_writer_roundtrip_and_pixel_size(tmp_path, labels):
    written = write_labels(
        str(tmp_path / "cells.tif"), labels, {"scale": (2.0, 0.5, 0.5), "units": ("um",) * 3}
    )
    assert written == [str(tmp_path / "cells.tif")]
    back = tifffile.imread(written[0])
    np.testing.assert_array_equal(back, labels)
    assert back.dtype == np.uint16
    with tifffile.TiffFile(written[0]) as tif:
        assert tif.is_imagej
        x_resolution = tif.pages[0].tags["XResolution"].value
        assert x_resolution[0] / x_resolution[1] == pytest.approx(2.0)  # 1 / 0.5 um


def test_large_label_values_are_kept(tmp_path):
    big = np.zeros((20, 20), dtype=np.uint32)
    big[2:5, 2:5] = 70000
    path = write_labels(str(tmp_path / "big.tiff"), big, {})[0]
    back = tifffile.imread(path)
    np.testing.assert_array_equal(back, big)


def test_folder_writer_one_file_per_layer(tmp_path, labels):
    layer_data = [
        (labels, {"name": "a/b labels", "scale": (1, 1, 1)}, "labels"),
        (labels[0], {"name": "a b labels"}, "labels"),
    ]
    written = write_labels_folder(str(tmp_path / "out"), layer_data)
    assert [p.rsplit("/", 1)[-1] for p in written] == ["a_b_labels.tif", "a_b_labels_2.tif"]
    np.testing.assert_array_equal(tifffile.imread(written[0]), labels)
    np.testing.assert_array_equal(tifffile.imread(written[1]), labels[0])


def test_export_refuses_to_overwrite_and_writes_nothing(tmp_path, labels):
    (tmp_path / "b.tif").write_bytes(b"keep me")
    items = [("a", labels, {}), ("b", labels, {})]
    with pytest.raises(NapariUnetError, match="already exist"):
        export_labels(items, tmp_path)
    assert not (tmp_path / "a.tif").exists()
    assert (tmp_path / "b.tif").read_bytes() == b"keep me"
    written = export_labels(items, tmp_path, overwrite=True)
    np.testing.assert_array_equal(tifffile.imread(written[1]), labels)


def test_export_needs_layers_and_a_folder(tmp_path):
    with pytest.raises(NapariUnetError, match="no Labels layers"):
        export_labels([], tmp_path)
    (tmp_path / "file").write_text("x")
    with pytest.raises(NapariUnetError, match="not a folder"):
        export_labels([("a", np.zeros((4, 4), int), {})], tmp_path / "file")
