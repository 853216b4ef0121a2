"""ImageJ ROI export: outlines on pixel corners that fill back to the objects' pixels."""

import zipfile

import numpy as np
import pytest
import roifile
import tifffile
from skimage.draw import polygon

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.rois import labels_to_rois, write_roi_zip


def rasterise(roi, shape):
    """Fill an ImageJ ROI as ImageJ does: a pixel is in when its centre is (even-odd).

    Vertices are on pixel corners, so pixel (r, c) is in when (r + 0.5, c + 0.5) is
    inside; skimage tests the integer point (r, c), hence the shift by -0.5.
    """
    out = np.zeros(shape, dtype=bool)
    for xy in roi.coordinates(multi=True):
        xy = np.asarray(xy, dtype=float)
        rr, cc = polygon(xy[:, 1] - 0.5, xy[:, 0] - 0.5, shape)
        part = np.zeros(shape, dtype=bool)
        part[rr, cc] = True
        out ^= part
    return out


def iou(a, b):
    return (a & b).sum() / (a | b).sum()


def read_back(path):
    rois = roifile.roiread(path)
    return rois if isinstance(rois, list) else [rois]


def _disc(shape, centre, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < radius**2


def _shape(name):
    m = np.zeros((24, 30), dtype=bool)
    if name == "square":
        m[5:15, 8:18] = True
    elif name == "disc":
        m = _disc(m.shape, (11.3, 14.6), 8.2)
    elif name == "L":
        m[3:20, 4:9] = True
        m[15:20, 4:22] = True
    elif name == "border":  # touches the top, left and right edges
        m[0:6, :] = True
        m[6:12, 0:3] = True
    elif name == "pixel":
        m[7, 9] = True
    elif name == "hole":
        m[4:18, 5:20] = True
        m[8:12, 9:14] = False
    elif name == "two_pieces":
        m[2:6, 2:6] = True
        m[12:20, 15:25] = True
    elif name == "diagonal":  # pieces touching only at a corner: one 8-connected object
        m[4:8, 4:8] = True
        m[8:12, 8:12] = True
    elif name == "ring_with_notch":  # a hole touching the outside at corners only
        m[4:16, 4:16] = True
        m[7:13, 7:13] = False
        m[6, 6] = False
        m[5, 5] = False
        m[4, 4] = False
    return m


SIMPLE = ["square", "disc", "L", "border", "pixel", "diagonal"]
COMPOSITE = ["hole", "two_pieces", "ring_with_notch"]


@pytest.mark.parametrize("name", SIMPLE + COMPOSITE)
def test_shapes_fill_back_exactly(tmp_path, name):
    mask = _shape(name)
    labels = mask.astype(np.uint16) * 5
    path, n = write_roi_zip(tmp_path / "rois.zip", labels)
    assert n == 1
    [roi] = read_back(path)
    assert roi.name == "0005"
    np.testing.assert_array_equal(rasterise(roi, mask.shape), mask)
    if name in COMPOSITE:
        assert roi.composite and roi.roitype == roifile.ROI_TYPE.RECT
    else:
        assert roi.roitype == roifile.ROI_TYPE.TRACED and not roi.composite
        # vertices on pixel corners, only where the outline turns
        xy = roi.coordinates()
        assert xy.dtype.kind == "i"
        steps = np.diff(np.vstack([xy, xy[:1]]), axis=0)
        assert np.all((steps[:, 0] == 0) ^ (steps[:, 1] == 0))
        following = np.roll(steps, -1, axis=0)
        turns = steps[:, 0] * following[:, 1] - steps[:, 1] * following[:, 0]
        assert np.all(turns != 0)


@pytest.mark.parametrize("seed", range(6))
def test_random_labels_fill_back_exactly(seed):
    # salt-and-pepper labels: many pieces, holes and pixels touching at corners only
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 4, size=(23, 17)).astype(np.uint8)
    rois = labels_to_rois(labels)
    assert [int(r.name) for r in rois] == [i for i in (1, 2, 3) if (labels == i).any()]
    for roi in rois:
        np.testing.assert_array_equal(rasterise(roi, labels.shape), labels == int(roi.name))


def test_square_vertices_and_bounds(tmp_path):
    labels = np.zeros((10, 12), dtype=np.int32)
    labels[2:5, 3:9] = 1
    [roi] = labels_to_rois(labels)
    assert roi.coordinates().tolist() == [[3, 2], [9, 2], [9, 5], [3, 5]]
    assert (roi.left, roi.top, roi.right, roi.bottom) == (3, 2, 9, 5)
    assert roi.position == 0 and roi.z_position == 0 and roi.t_position == 0


def test_hole_outline_runs_the_other_way():
    [roi] = labels_to_rois(_shape("hole").astype(np.uint8))
    outer, inner = roi.coordinates(multi=True)

    def signed_area(xy):
        x, y = xy[:, 0], xy[:, 1]
        return 0.5 * np.sum(x[:-1] * y[1:] - x[1:] * y[:-1])

    assert signed_area(outer) == pytest.approx(14 * 15)
    assert signed_area(inner) == pytest.approx(-4 * 5)


def test_touching_objects_names_sort_like_ids(tmp_path):
    labels = np.zeros((40, 40), dtype=np.uint32)
    labels[2:20, 2:20] = 250
    labels[2:20, 20:38] = 3  # touches 250 along a whole side
    labels[20:38, 2:38] = 17
    labels[25:30, 25:30] = 0
    path, n = write_roi_zip(tmp_path / "x.zip", labels)
    assert n == 3
    with zipfile.ZipFile(path) as zf:
        assert zf.namelist() == ["0003.roi", "0017.roi", "0250.roi"]
    rois = read_back(path)
    assert [r.name for r in rois] == sorted(r.name for r in rois)
    for roi in rois:
        np.testing.assert_array_equal(rasterise(roi, labels.shape), labels == int(roi.name))


def test_large_and_sparse_label_ids():
    labels = np.zeros((12, 12), dtype=np.uint32)
    labels[1:4, 1:4] = 7
    labels[6:10, 6:11] = 5_000_000  # above the find_objects shortcut
    full = labels.copy()
    full[full == 0] = 9  # no background pixel at all
    for image, ids in [(labels, [7, 5_000_000]), (full, [7, 9, 5_000_000])]:
        rois = labels_to_rois(image)
        assert [r.name for r in rois] == [f"{i:07d}" for i in ids]
        for roi in rois:
            filled = rasterise(roi, image.shape)
            np.testing.assert_array_equal(filled, image == int(roi.name))


def test_bool_mask_is_one_object():
    mask = _shape("two_pieces")
    [roi] = labels_to_rois(mask)
    assert roi.name == "0001"
    np.testing.assert_array_equal(rasterise(roi, mask.shape), mask)


def test_very_wide_object_uses_float_path():
    # A polygon stores 16-bit offsets read back as signed: wider objects go composite.
    labels = np.zeros((3, 33_000), dtype=np.uint8)
    labels[1, 5:32_900] = 1
    [roi] = labels_to_rois(labels)
    assert roi.composite
    [outline] = roi.coordinates(multi=True)
    assert outline[:, 0].min() == 5 and outline[:, 0].max() == 32_900


def test_real_masks_round_trip(tmp_path, dsb_small):
    ious = []
    for _, mask_path in dsb_small:
        labels = tifffile.imread(mask_path)
        ids = [int(i) for i in np.unique(labels) if i]
        path, n = write_roi_zip(tmp_path / f"{mask_path.stem}.zip", labels)
        rois = read_back(path)
        assert n == len(rois) == len(ids)
        assert [int(r.name) for r in rois] == ids
        for roi in rois:
            obj = labels == int(roi.name)
            filled = rasterise(roi, labels.shape)
            ious.append(iou(filled, obj))
            np.testing.assert_array_equal(filled, obj)  # exact, not just IoU >= 0.9
    assert min(ious) >= 0.9
    print(f"{len(ious)} ROIs, IoU min {min(ious):.3f} median {np.median(ious):.3f}")


def test_z_stack_positions_and_names(tmp_path):
    labels = np.zeros((12, 20, 20), dtype=np.uint16)
    labels[0, 2:6, 2:6] = 1
    labels[2, 5:9, 5:12] = 1
    labels[2, 12:18, 3:8] = 9
    labels[11, 0:4, 0:4] = 4
    path, n = write_roi_zip(tmp_path / "z.zip", labels)
    rois = read_back(path)
    assert n == 4
    assert [r.name for r in rois] == ["z01-0001", "z03-0001", "z03-0009", "z12-0004"]
    assert [r.position for r in rois] == [1, 3, 3, 12]
    assert all(r.z_position == 0 and r.t_position == 0 for r in rois)
    for roi in rois:
        z, label_id = roi.position - 1, int(roi.name.split("-")[-1])
        np.testing.assert_array_equal(rasterise(roi, (20, 20)), labels[z] == label_id)


def test_time_series_and_hyperstack_positions():
    labels = np.zeros((3, 10, 10), dtype=np.uint8)
    labels[1, 2:5, 2:5] = 2
    [roi] = labels_to_rois(labels, axes="tyx")
    assert roi.name == "t2-0002" and roi.position == 2

    stack = np.zeros((2, 3, 10, 10), dtype=np.uint8)
    stack[1, 2, 2:5, 2:5] = 6
    [roi] = labels_to_rois(stack)
    assert roi.name == "t2-z3-0006"
    assert (roi.position, roi.t_position, roi.z_position) == (0, 2, 3)
    [roi] = labels_to_rois(stack.transpose(1, 0, 2, 3), axes="ZTYX")
    assert roi.name == "z3-t2-0006"
    assert (roi.t_position, roi.z_position) == (2, 3)


@pytest.mark.parametrize(
    ("labels", "axes", "match"),
    [
        (np.full((4, 4), 0.5), None, "non-integer"),
        (np.array([[0, -1], [2, 3]]), None, "negative"),
        (np.array(["a", "b"]), None, "dtype"),
        (np.zeros(5, dtype=int), None, "2-D"),
        (np.zeros((2, 2, 2, 4, 4), dtype=int), None, "2-D"),
        (np.zeros((2, 4, 4), dtype=int), "CYX", "does not fit"),
        (np.zeros((2, 4, 4), dtype=int), "ZZYX", "does not fit"),
        (np.zeros((2, 2, 4, 4), dtype=int), "ZZYX", "does not fit"),
        (np.zeros((2, 60_536), dtype=np.uint8), None, "up to 60535"),
    ],
)
def test_invalid_labels_are_refused(labels, axes, match):
    with pytest.raises(NapariUnetError, match=match):
        labels_to_rois(labels, axes=axes)


def test_empty_labels_write_nothing(tmp_path):
    assert labels_to_rois(np.zeros((5, 5), dtype=int)) == []
    with pytest.raises(NapariUnetError, match="no objects"):
        write_roi_zip(tmp_path / "empty.zip", np.zeros((5, 5), dtype=int))
    assert list(tmp_path.iterdir()) == []


def test_file_refusals_and_overwrite(tmp_path):
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[1:3, 1:3] = 1
    target = tmp_path / "out.zip"
    target.write_bytes(b"keep me")
    with pytest.raises(NapariUnetError, match="exists"):
        write_roi_zip(target, labels)
    assert target.read_bytes() == b"keep me"
    write_roi_zip(target, labels, overwrite=True)
    assert [r.name for r in read_back(target)] == ["0001"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.zip"]  # no temporary left

    folder = tmp_path / "folder.zip"
    folder.mkdir()
    with pytest.raises(NapariUnetError, match="is a folder"):
        write_roi_zip(folder, labels, overwrite=True)
    with pytest.raises(NapariUnetError, match="does not end in .zip"):
        write_roi_zip(tmp_path / "rois.roi", labels)
    assert not (tmp_path / "rois.roi").exists()


def test_new_folder_is_created(tmp_path):
    labels = np.zeros((6, 6), dtype=np.uint8)
    labels[1:3, 1:3] = 3
    path, n = write_roi_zip(tmp_path / "a" / "b" / "rois.zip", labels)
    assert path.is_file() and n == 1


# ------------------------------------------------------------------ command line
def test_cli_export_rois(tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.core.io import write_labels_tiff

    labels = np.zeros((3, 40, 40), np.uint16)
    labels[0, 2:9, 2:9] = 1
    labels[2, 20:30, 5:15] = 2
    write_labels_tiff(tmp_path / "in" / "movie.tif", labels, axes="TYX")  # a time series
    write_labels_tiff(tmp_path / "in" / "cells_labels.tif", labels[0])
    write_labels_tiff(tmp_path / "in" / "blank.tif", np.zeros((8, 8), np.uint8))
    out = tmp_path / "rois"
    args = ["export-rois", "--labels", str(tmp_path / "in"), "--out", str(out)]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "wrote 3 ROI(s) in 2" in err and "no objects" in err
    assert sorted(p.name for p in out.iterdir()) == ["cells_rois.zip", "movie_rois.zip"]
    movie = roifile.roiread(out / "movie_rois.zip")
    assert [r.name for r in movie] == ["t1-0001", "t3-0002"]  # axes from the TIFF
    # an existing set is never replaced silently; --overwrite replaces it
    before = (out / "cells_rois.zip").read_bytes()
    assert main(args) == 2 and "exist" in capsys.readouterr().err
    assert (out / "cells_rois.zip").read_bytes() == before
    assert main(args + ["--overwrite"]) == 0
    # two inputs that would write one file are refused, naming both
    (tmp_path / "in" / "cells_labels.png").write_bytes(b"")
    tifffile.imwrite(tmp_path / "in2.tif", labels[0])
    assert (
        main(["export-rois", "--labels", str(tmp_path / "in"), "--out", str(tmp_path / "o2")]) == 2
    )
    err = capsys.readouterr().err
    assert "cells_labels.png" in err and "cells_labels.tif" in err
    assert not (tmp_path / "o2").exists()
    # one file to one .zip
    assert main(["export-rois", "--labels", str(tmp_path / "in2.tif"), "--out",
                 str(tmp_path / "one.zip")]) == 0  # fmt: skip
    one = roifile.roiread(tmp_path / "one.zip")
    assert (one if isinstance(one, list) else [one])[0].name == "0001"


def test_cli_export_rois_checks_every_input_before_replacing_anything(tmp_path, capsys):
    from napari_unet.cli import main
    from napari_unet.core.io import write_labels_tiff

    good = np.zeros((20, 20), np.uint16)
    good[2:8, 2:8] = 1
    write_labels_tiff(tmp_path / "in" / "a.tif", good)
    out = tmp_path / "rois"
    assert main(["export-rois", "--labels", str(tmp_path / "in"), "--out", str(out)]) == 0
    before = (out / "a_rois.zip").read_bytes()
    tifffile.imwrite(tmp_path / "in" / "b.tif", np.full((20, 20), 0.5, np.float32))
    good[10:15, 10:15] = 2
    write_labels_tiff(tmp_path / "in" / "a.tif", good, overwrite=True)
    args = ["export-rois", "--labels", str(tmp_path / "in"), "--out", str(out), "--overwrite"]
    assert main(args) == 2
    assert "b.tif" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["a_rois.zip"]
    assert (out / "a_rois.zip").read_bytes() == before  # the earlier set, untouched
