"""The napari writers and the folder export: files read back identical."""

import os

import numpy as np
import pytest
import tifffile

from napari_unet import PLUGIN_NAME
from napari_unet._writer import (
    export_labels,
    write_labels,
    write_labels_folder,
    write_labels_rois,
)
from napari_unet.core.errors import NapariUnetError

PLUGIN = PLUGIN_NAME
# The file types napari's save dialog lists for our writers (manifest display_name
# after the plugin's display name); the user guide quotes them.
TIFF_FILTER = "napari-unet labels TIFF (*.tif *.tiff)"
ROI_FILTER = "napari-unet ImageJ ROI set (*.zip)"


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
    assert [p.rsplit("/", 1)[-1] for p in written] == ["a_b_labels.tif", "a_b_labels-2.tif"]
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


def _imagej(path):
    with tifffile.TiffFile(path) as tif:
        x_resolution = tif.pages[0].tags["XResolution"].value
        return tif.is_imagej, tif.imagej_metadata, x_resolution[0] / x_resolution[1]


@pytest.mark.parametrize(
    ("units", "unit"),
    [(("pixel",) * 2, "pixel"), (("micrometer",) * 2, "um"), (("nanometer",) * 2, "nm")],
)
def test_pixel_size_keeps_the_layer_unit(tmp_path, units, unit):
    labels = np.zeros((8, 8), dtype=np.uint8)
    labels[2:5, 2:5] = 1
    [path] = write_labels(str(tmp_path / "a.tif"), labels, {"scale": (0.5, 0.5), "units": units})
    is_imagej, metadata, pixels_per_unit = _imagej(path)
    assert is_imagej and metadata["unit"] == unit
    assert pixels_per_unit == pytest.approx(2.0)


def test_uncalibrated_layer_writes_no_unit(tmp_path):
    labels = np.zeros((8, 8), dtype=np.uint8)
    [path] = write_labels(
        str(tmp_path / "a.tif"), labels, {"scale": (1.0, 1.0), "units": ("pixel", "pixel")}
    )
    is_imagej, metadata, pixels_per_unit = _imagej(path)
    assert is_imagej and "unit" not in metadata and pixels_per_unit == 1.0


def test_names_get_the_writers_suffix(tmp_path, labels):
    assert write_labels(str(tmp_path / "cells"), labels, {}) == [str(tmp_path / "cells.tif")]
    assert write_labels(str(tmp_path / "c.TIFF"), labels, {}) == [str(tmp_path / "c.TIFF")]
    assert write_labels(str(tmp_path / "c.png"), labels, {}) == [str(tmp_path / "c.png.tif")]
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "cells.tif"), labels)
    written = write_labels_rois(str(tmp_path / "cells"), labels, {})
    assert written == [str(tmp_path / "cells.zip")]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "c.TIFF",
        "c.png.tif",
        "cells.tif",
        "cells.zip",
    ]


def test_roi_writer_stack_and_time_axis(tmp_path, labels):
    import roifile

    [path] = write_labels_rois(str(tmp_path / "z.zip"), labels, {})
    rois = roifile.roiread(path)
    names = [r.name for r in rois]
    assert names[:3] == ["z1-0001", "z2-0001", "z2-0002"]
    assert [r.position for r in rois[:3]] == [1, 2, 2]
    ids = [(z, int(i)) for z in range(3) for i in np.unique(labels[z]) if i]
    assert [(r.position - 1, int(r.name.split("-")[1])) for r in rois] == ids

    [path] = write_labels_rois(str(tmp_path / "t.zip"), labels, {"axis_labels": ("t", "y", "x")})
    assert roifile.roiread(path)[0].name == "t1-0001"
    [path] = write_labels(str(tmp_path / "t.tif"), labels, {"axis_labels": ("time", "y", "x")})
    with tifffile.TiffFile(path) as tif:
        assert tif.series[0].axes == "TYX"


def test_roi_writer_refuses_empty_layer(tmp_path):
    with pytest.raises(NapariUnetError, match="no objects"):
        write_labels_rois(str(tmp_path / "e.zip"), np.zeros((6, 6), dtype=np.uint8), {})
    assert list(tmp_path.iterdir()) == []


# --------------------------------------------------------------------------- in napari


@pytest.fixture
def viewer_with_labels(make_napari_viewer, labels):
    viewer = make_napari_viewer()
    layer = viewer.add_labels(labels[1], name="cells_labels", scale=(0.5, 0.5))
    return viewer, layer


@pytest.mark.gui
def test_layer_save_through_the_plugin(tmp_path, viewer_with_labels, labels):
    import roifile

    _, layer = viewer_with_labels
    [tif_path] = layer.save(str(tmp_path / "a.tif"), plugin=PLUGIN)
    np.testing.assert_array_equal(tifffile.imread(tif_path), labels[1])
    is_imagej, metadata, pixels_per_unit = _imagej(tif_path)
    assert is_imagej and metadata["unit"] == "pixel" and pixels_per_unit == pytest.approx(2.0)

    [zip_path] = layer.save(str(tmp_path / "a.zip"), plugin=PLUGIN)
    rois = roifile.roiread(zip_path)
    assert [int(r.name) for r in rois] == [1, 2]
    assert rois[1].coordinates().tolist() == [[10, 20], [40, 20], [40, 35], [10, 35]]

    # no suffix, plugin given: napari picks the plugin's first writer and adds ".tif"
    [bare] = layer.save(str(tmp_path / "bare"), plugin=PLUGIN)
    assert bare == str(tmp_path / "bare.tif")
    assert tifffile.imread(bare).dtype == np.uint16


def _save_with_dialog(monkeypatch, viewer, typed, file_type, seen):
    """Run napari's File > Save Selected Layer(s) as if the user typed `typed` (None: kept
    the pre-filled name) and chose `file_type` in the "Files of type" list."""
    from napari._qt import qt_viewer

    def get_save_file_name(parent, caption, directory, filter="", options=None):
        seen["filters"] = filter.split(";;")
        seen["prefilled"] = directory
        name = typed if typed is not None else os.path.basename(directory)
        return os.path.join(seen["folder"], name), file_type

    monkeypatch.setattr(qt_viewer.QFileDialog, "getSaveFileName", staticmethod(get_save_file_name))
    viewer.window._qt_viewer._save_layers_dialog(selected=True)


@pytest.mark.gui
@pytest.mark.parametrize("typed", ["x.tif", None], ids=["typed-x.tif", "prefilled-name"])
def test_save_dialog_with_our_tiff_file_type(tmp_path, monkeypatch, viewer_with_labels, typed):
    viewer, _ = viewer_with_labels
    seen = {"folder": str(tmp_path)}
    _save_with_dialog(monkeypatch, viewer, typed, TIFF_FILTER, seen)
    assert TIFF_FILTER in seen["filters"] and ROI_FILTER in seen["filters"]
    assert os.path.basename(seen["prefilled"]) == "cells_labels"  # no suffix
    expected = tmp_path / ("x.tif" if typed else "cells_labels.tif")
    assert sorted(tmp_path.iterdir()) == [expected]
    back = tifffile.imread(expected)
    assert back.dtype == np.uint16
    np.testing.assert_array_equal(back, viewer.layers["cells_labels"].data)
    is_imagej, metadata, pixels_per_unit = _imagej(expected)
    assert is_imagej and metadata["unit"] == "pixel" and pixels_per_unit == pytest.approx(2.0)


@pytest.mark.gui
def test_save_dialog_with_our_roi_file_type(tmp_path, monkeypatch, viewer_with_labels):
    import roifile

    viewer, _ = viewer_with_labels
    seen = {"folder": str(tmp_path)}
    _save_with_dialog(monkeypatch, viewer, None, ROI_FILTER, seen)
    expected = tmp_path / "cells_labels.zip"
    assert sorted(tmp_path.iterdir()) == [expected]
    assert [r.name for r in roifile.roiread(expected)] == ["0001", "0002"]


def test_a_suffix_added_by_the_writer_never_replaces_a_file_unasked(tmp_path):
    from napari_unet._writer import write_labels, write_labels_rois

    labels = np.zeros((8, 8), np.uint16)
    labels[2:5, 2:5] = 1
    (tmp_path / "cells.tif").write_bytes(b"the user's file")
    (tmp_path / "cells.zip").write_bytes(b"the user's set")
    # the dialog asked about "cells" (what was typed), not about "cells.tif"
    with pytest.raises(NapariUnetError, match="cells.tif exists already"):
        write_labels(str(tmp_path / "cells"), labels, {})
    with pytest.raises(NapariUnetError, match="cells.zip exists already"):
        write_labels_rois(str(tmp_path / "cells"), labels, {})
    assert (tmp_path / "cells.tif").read_bytes() == b"the user's file"
    assert (tmp_path / "cells.zip").read_bytes() == b"the user's set"
    # the whole name, confirmed by the dialog, is replaced
    write_labels(str(tmp_path / "cells.tif"), labels, {})
    assert tifffile.imread(tmp_path / "cells.tif").max() == 1


def test_folder_writer_names_files_as_the_exports_do(tmp_path, labels):
    from napari_unet.core.io import safe_stems

    names = ["cells 1", "cells/1", "?", "Noyaux é"]
    written = write_labels_folder(
        str(tmp_path / "out"), [(labels[0], {"name": n}, "labels") for n in names]
    )
    stems = safe_stems(names, fallback="labels")
    assert [p.rsplit("/", 1)[-1] for p in written] == [f"{s}.tif" for s in stems]
    assert stems == ["cells_1", "cells_1-2", "labels", "Noyaux"]
