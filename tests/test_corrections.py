"""Corrections -> sparse annotations, merging rounds, partial scores, saved training sets."""

from __future__ import annotations

import doctest
import json
import math
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import tifffile

from napari_unet.core import corrections
from napari_unet.core.corrections import (
    INDEX_FILE,
    SavedPair,
    annotation_from_edits,
    annotation_summary,
    is_empty_annotation,
    load_training_set,
    merge_annotations,
    partial_f1,
    region_signature,
    regions_mask,
    save_training_set,
    sort_regions,
    to_sparse,
    whole_layer_annotation,
)
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.metrics import evaluate


def test_docstring_examples_run():
    result = doctest.testmod(corrections, extraglobs={"np": np})
    assert result.attempted >= 8
    assert result.failed == 0


def test_module_is_qt_and_torch_free():
    code = (
        "import sys, napari_unet.core.corrections as c; "
        "bad = [m for m in ('napari', 'qtpy', 'magicgui', 'torch') if m in sys.modules]; "
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


# --------------------------------------------------------------------------- to_sparse


def test_to_sparse_shifts_every_label():
    labels = np.array([[0, 1, 1], [0, 5, 0]], dtype=np.uint16)
    out = to_sparse(labels)
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, [[1, 2, 2], [1, 6, 1]])
    np.testing.assert_array_equal(whole_layer_annotation(labels), out)
    np.testing.assert_array_equal(to_sparse(labels > 0), [[1, 2, 2], [1, 2, 1]])


@pytest.mark.parametrize(
    "bad",
    [np.array([[0, -1]]), np.array([[0.0, 1.5]]), np.array([[0, 2**31 - 1]], dtype=np.int64)],
)
def test_to_sparse_rejects_bad_labels(bad):
    with pytest.raises(ValueError):
        to_sparse(bad)


# --------------------------------------------------------------------------- from edits


def _ring1(obj: tuple[slice, slice], shape: tuple[int, int]) -> np.ndarray:
    """The 4-neighbour band (Euclidean distance 1) around a rectangle, by hand."""
    (r, c) = obj
    band = np.zeros(shape, bool)
    band[r.start - 1, c] = True
    band[r.stop, c] = True
    band[r, c.start - 1] = True
    band[r, c.stop] = True
    return band


def test_split_merged_object_annotates_both_halves_and_a_ring():
    baseline = np.zeros((10, 12), np.int32)
    baseline[3:7, 2:10] = 1  # two nuclei predicted as one
    baseline[0:2, 0:2] = 2  # an untouched object far away
    corrected = baseline.copy()
    corrected[3:7, 6:10] = 3  # the user paints a new id over the right half

    out = annotation_from_edits(corrected, baseline, ring=1)

    expected = np.zeros_like(out)
    expected[_ring1((slice(3, 7), slice(2, 10)), out.shape)] = 1
    expected[3:7, 2:6] = 2  # the remainder of the old object
    expected[3:7, 6:10] = 3  # the painted half
    assert out.dtype == np.int32
    np.testing.assert_array_equal(out, expected)
    assert (out[0:2, 0:2] == 0).all()  # not checked by the user: not annotated

    # default ring: 4x4 objects, diameter 4.5 px -> three quarters of it round to 3
    auto = annotation_from_edits(corrected, baseline)
    np.testing.assert_array_equal(auto, annotation_from_edits(corrected, baseline, ring=3))
    assert not np.array_equal(auto, annotation_from_edits(corrected, baseline, ring=2))
    assert auto[0, 5] == 1 and (auto[0:2, 0:2] == 0).all()  # never the untouched object


def test_erased_false_object_becomes_background_with_its_band():
    baseline = np.zeros((9, 9), np.uint16)
    baseline[1:4, 1:4] = 1
    baseline[6:8, 5:9] = 2  # a false object
    corrected = baseline.copy()
    corrected[corrected == 2] = 0

    out = annotation_from_edits(corrected, baseline, ring=1)

    expected = np.zeros((9, 9), np.int32)
    expected[_ring1((slice(6, 8), slice(5, 9)), (10, 10))[:9, :9]] = 1
    expected[6:8, 5:9] = 1
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        annotation_from_edits(corrected, baseline, ring=0), (baseline == 2).astype(np.int32)
    )
    # nothing painted: the default band is sized by what was erased (2x4 px: diameter
    # 3.2 -> 2 px); it never reaches the untouched object 1
    auto = annotation_from_edits(corrected, baseline)
    np.testing.assert_array_equal(auto, annotation_from_edits(corrected, baseline, ring=2))
    assert auto[4, 5] == 1 and auto[5, 3] == 0 and (auto[baseline == 1] == 0).all()


def test_the_band_also_surrounds_an_erased_false_object():
    # the user paints a missed nucleus and erases a false object elsewhere: the user saw
    # the surroundings of both, so both get the background band
    baseline = np.zeros((16, 16), np.int32)
    baseline[10:13, 10:13] = 5  # a false object
    corrected = np.zeros_like(baseline)
    corrected[2:5, 2:5] = 1  # a missed nucleus, painted

    out = annotation_from_edits(corrected, baseline, ring=1)

    expected = np.zeros_like(out)
    expected[_ring1((slice(2, 5), slice(2, 5)), out.shape)] = 1
    expected[_ring1((slice(10, 13), slice(10, 13)), out.shape)] = 1
    expected[10:13, 10:13] = 1  # the erased object: background
    expected[2:5, 2:5] = 2
    np.testing.assert_array_equal(out, expected)


def test_shrunk_object_annotates_the_rest_and_the_erased_pixels():
    baseline = np.zeros((8, 8), np.int32)
    baseline[2:6, 2:6] = 4
    corrected = baseline.copy()
    corrected[2:6, 5] = 0  # the user trims a column that was too much

    out = annotation_from_edits(corrected, baseline, ring=0)

    expected = np.zeros_like(out)
    expected[2:6, 2:5] = 2
    expected[2:6, 5] = 1
    np.testing.assert_array_equal(out, expected)


def test_missed_nucleus_painted_from_scratch():
    corrected = np.zeros((11, 11), np.int64)
    corrected[4:7, 4:7] = 9

    out = annotation_from_edits(corrected, ring=1)

    expected = np.zeros((11, 11), np.int32)
    expected[_ring1((slice(4, 7), slice(4, 7)), (11, 11))] = 1
    expected[4:7, 4:7] = 2
    np.testing.assert_array_equal(out, expected)
    np.testing.assert_array_equal(
        annotation_from_edits(corrected, np.zeros_like(corrected), ring=1), expected
    )


def test_nothing_changed_gives_no_annotation():
    labels = np.zeros((6, 7), np.int32)
    labels[1:3, 1:3] = 1
    out = annotation_from_edits(labels, labels.copy())
    assert out.dtype == np.int32 and out.shape == (6, 7)
    assert not out.any() and is_empty_annotation(out)
    assert is_empty_annotation(annotation_from_edits(np.zeros((4, 4), int)))
    assert annotation_summary(out)["objects"] == 0


def test_ring_leaves_uninvolved_neighbours_unannotated():
    baseline = np.zeros((12, 12), np.int32)
    baseline[2:5, 2:5] = 1
    baseline[2:5, 5:8] = 2
    corrected = baseline.copy()
    corrected[6:8, 2:5] = 3  # a missed nucleus just below both objects

    out = annotation_from_edits(corrected, baseline, ring=3)

    assert (out[baseline > 0] == 0).all()  # neighbours are someone else's business
    assert (out[6:8, 2:5] == 2).all()
    assert out[5, 3] == 1 and out[5, 6] == 1  # the gap the user saw, within 3 px
    assert out[5, 7] == 0  # sqrt(10) > 3 from the object
    assert out[9, 3] == 1 and out[10, 3] == 1 and out[11, 3] == 0  # 2 and 3 px, then 4
    assert out[7, 8] == 0 and out[6, 7] == 1  # distance 4 and 3
    assert set(np.unique(out)) == {0, 1, 2}


def test_painted_over_a_neighbour_involves_it():
    baseline = np.zeros((8, 10), np.int32)
    baseline[2:6, 1:5] = 1
    baseline[2:6, 5:9] = 2
    corrected = baseline.copy()
    corrected[2:6, 4] = 2  # the user moves the border one column left

    out = annotation_from_edits(corrected, baseline, ring=0)

    expected = np.zeros_like(out)
    expected[2:6, 1:4] = 2
    expected[2:6, 4:9] = 3
    np.testing.assert_array_equal(out, expected)


def test_3d_stack_ring_stays_in_the_painted_planes():
    corrected = np.zeros((5, 8, 8), np.int32)
    corrected[1:4, 2:5, 2:5] = 7

    out = annotation_from_edits(corrected, ring=1)

    expected = np.zeros_like(out)  # planes 0 and 4 were not looked at: not annotated
    expected[1:4, 1, 2:5] = expected[1:4, 5, 2:5] = 1
    expected[1:4, 2:5, 1] = expected[1:4, 2:5, 5] = 1
    expected[1:4, 2:5, 2:5] = 2
    np.testing.assert_array_equal(out, expected)

    # one nucleus painted in plane 2 of a stack: nothing is annotated in the other planes
    stack = np.zeros((5, 30, 30), np.int32)
    stack[2, 10:20, 10:20] = 1
    single = annotation_from_edits(stack)
    assert not single[[0, 1, 3, 4]].any()
    assert (single[2, 10:20, 10:20] == 2).all() and (single[2] == 1).any()

    # a split in 3D, with the default ring (9-pixel cross-sections: diameter 3.4 -> ring 3)
    baseline = np.zeros((6, 10, 10), np.int32)
    baseline[1:4, 2:5, 2:8] = 1
    edited = baseline.copy()
    edited[1:4, 2:5, 5:8] = 2
    split = annotation_from_edits(edited, baseline)
    assert (split[1:4, 2:5, 2:5] == 2).all() and (split[1:4, 2:5, 5:8] == 3).all()
    assert split[1, 2, 0] == 1 and split[1, 2, 9] == 1
    assert not split[[0, 4, 5]].any()  # planes without edits
    assert split[1, 7, 3] == 1 and split[1, 8, 3] == 0  # 3 px away, 4 px away


def test_a_later_ring_does_not_erase_an_earlier_object():
    # round 1: the user painted a missed nucleus A
    first = np.zeros((20, 20), np.int32)
    first[2:6, 2:6] = 5
    old = annotation_from_edits(first)
    # round 2: the new prediction still misses A; the user fixes neighbour B next to it
    predicted = np.zeros((20, 20), np.int32)
    predicted[2:6, 8:12] = 1
    edited = predicted.copy()
    edited[2:6, 7:12] = 1  # B grown by a column, towards A
    new, band = annotation_from_edits(edited, predicted, ring=3, return_ring=True)
    assert band[2:6, 4:7].any() and (new[2:6, 4:6] == 1).any()  # the band covers part of A
    merged = merge_annotations(old, new, new_ring=band)
    assert (merged[2:6, 2:6] >= 2).all()  # A is kept whole
    assert len(np.unique(merged[merged >= 2])) == 2
    # without the band mask, A would lose pixels to it (the plain "later wins" rule)
    assert (merge_annotations(old, new)[2:6, 2:6] == 1).any()


def test_bool_mask_is_one_object():
    mask = np.zeros((8, 8), bool)
    mask[1:3, 1:3] = True
    mask[5:7, 5:7] = True
    out = annotation_from_edits(mask, ring=0)
    assert set(np.unique(out)) == {0, 2}
    assert (out[mask] == 2).all()


def test_edits_input_errors():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(4, 5\)"):
        annotation_from_edits(np.zeros((4, 4), int), np.zeros((4, 5), int))
    with pytest.raises(ValueError, match="negative"):
        annotation_from_edits(np.array([[0, -2]]))
    with pytest.raises(ValueError):
        annotation_from_edits(np.array([[0.0, 1.5]]))
    with pytest.raises(ValueError, match="ring"):
        annotation_from_edits(np.ones((3, 3), int), ring=-1)


# --------------------------------------------------------------------------- merge


# --------------------------------------------------------------------------- checked regions


def _square(y0, x0, y1, x1, *lead):
    """napari's four rectangle corners (pixel centres y0..y1, x0..x1 inside)."""
    corners = [[y0, x0], [y0, x1], [y1, x1], [y1, x0]]
    return np.array([list(lead) + c for c in corners], dtype=float)


def test_regions_mask_rectangle_polygon_ellipse_and_clipping():
    m = regions_mask((6, 8), [("rectangle", _square(1, 2, 3, 4))])
    expected = np.zeros((6, 8), bool)
    expected[1:4, 2:5] = True
    np.testing.assert_array_equal(m, expected)
    # a triangle: the pixel centres inside (or on its edges)
    tri = regions_mask((5, 5), [("polygon", [[0, 0], [0, 4], [4, 0]])])
    assert tri[0, 0] and tri[0, 4] and tri[2, 2] and not tri[4, 4] and not tri[3, 3]
    # an ellipse inside its bounding box, corners left out
    ell = regions_mask((11, 11), [("ellipse", _square(0, 0, 10, 10))])
    assert ell[5, 5] and ell[0, 5] and ell[5, 0] and not ell[0, 0] and not ell[10, 10]
    assert 0.70 < ell.sum() / 100 < 0.85  # pi/4 of the 10 x 10 box
    # partly outside the image: the inside part only; wholly outside: nothing
    clipped = regions_mask((4, 4), [("rectangle", _square(-5, -5, 1, 1))])
    assert clipped.sum() == 4 and clipped[:2, :2].all()
    assert not regions_mask((4, 4), [("rectangle", _square(10, 10, 20, 20))]).any()


def test_regions_mask_planes_of_a_stack():
    shape = (3, 6, 6)
    one = regions_mask(shape, [("rectangle", _square(1, 1, 2, 2, 1.2))])  # plane 1 (rounded)
    assert one[1].sum() == 4 and not one[0].any() and not one[2].any()
    every = regions_mask(shape, [("rectangle", _square(1, 1, 2, 2))])  # 2D: every plane
    assert all(every[z].sum() == 4 for z in range(3))
    assert not regions_mask(shape, [("rectangle", _square(1, 1, 2, 2, 7))]).any()
    tilted = _square(1, 1, 2, 2, 0)
    tilted[2, 0] = 2
    with pytest.raises(NapariUnetError, match="not flat in one plane"):
        regions_mask(shape, [("rectangle", tilted)])


@pytest.mark.parametrize(
    ("regions", "match"),
    [
        ([("line", [[0, 0], [3, 3]])], "only rectangle, polygon, ellipse"),
        ([("polygon", [[0, 0], [3, 3]])], "at least 3 vertices"),
        ([("polygon", [[0, 0, 0, 0], [3, 3, 0, 0], [3, 0, 0, 0]])], "4 coordinates; this image"),
        ([("polygon", [[0, 0], [3, np.nan], [3, 0]])], "not finite"),
        ([("ellipse", [[0, 0], [0, 3], [3, 3]])], "4 bounding-box corners"),
    ],
)
def test_regions_mask_errors(regions, match):
    with pytest.raises(NapariUnetError, match=match):
        regions_mask((5, 5), regions)
    with pytest.raises(NapariUnetError, match="at least 2 axes"):
        regions_mask((5,), [("rectangle", _square(0, 0, 1, 1))])


def test_sort_regions_new_learned_and_lines():
    box = _square(0, 0, 4, 4)
    regions = [
        ("rectangle", box),  # learned before
        ("rectangle", box + 0.2),  # the same one, moved: new
        ("path", box),  # encloses nothing
        ("ellipse", box),  # same vertices, another kind: new
        ("rectangle", box + 1e-5),  # learned (moved by less than 1/1000 pixel)
    ]
    assert sort_regions(regions, [("rectangle", box)]) == ([1, 3], [0, 4], [2])
    assert sort_regions(regions, []) == ([0, 1, 3, 4], [], [2])


def test_checked_region_counts_whole_edited_or_not():
    """Inside a checked rectangle every object (whole, also across its edge) and every empty
    pixel is annotated; outside it nothing, and no band is drawn around it."""
    pred = np.zeros((40, 40), np.int32)
    pred[5:10, 5:10] = 1  # inside the region, right: never edited
    pred[12:20, 16:24] = 2  # crosses the region's edge
    pred[30:35, 30:35] = 3  # far outside, unchecked
    checked = regions_mask(pred.shape, [("rectangle", _square(2, 2, 15, 18))])
    ann = annotation_from_edits(pred, pred, checked=checked)
    assert set(np.unique(ann[5:10, 5:10])) == {2}
    assert set(np.unique(ann[12:20, 16:24])) == {3}  # whole, beyond the rectangle
    empty_inside = checked & (pred == 0)
    assert (ann[empty_inside] == 1).all()
    outside = ~checked & ~np.isin(pred, [1, 2])
    assert not ann[outside].any()  # no band, object 3 unannotated
    # no baseline (a layer painted from scratch): every object is the user's, object 3 too
    scratch = annotation_from_edits(pred, None, checked=checked)
    assert (scratch[30:35, 30:35] >= 2).all() and (scratch[ann > 0] > 0).all()


def test_checked_region_with_edits_inside_and_outside():
    pred = np.zeros((60, 60), np.int32)
    pred[5:15, 5:25] = 1  # two nuclei merged, inside the region
    pred[40:46, 40:46] = 2  # a false object outside the region, erased below
    corrected = pred.copy()
    corrected[5:15, 15:25] = 4  # split
    corrected[40:46, 40:46] = 0
    checked = regions_mask(pred.shape, [("rectangle", _square(0, 0, 20, 30))])
    ann, band = annotation_from_edits(corrected, pred, checked=checked, return_ring=True)
    assert ann[10, 10] != ann[10, 20] and ann[10, 10] >= 2 and ann[10, 20] >= 2
    assert (ann[checked & (corrected == 0)] == 1).all()
    # the erased object outside: background with its band (2 px at least), not beyond
    assert (ann[40:46, 40:46] == 1).all() and ann[38, 43] == 1 and ann[43, 48] == 1
    assert not ann[55, 5] and not ann[30, 5]
    # no band around the checked region: just below it nothing is annotated
    assert not ann[22, 10] and not band[:21, :31].any()


def test_checked_region_in_one_plane_of_a_stack():
    labels = np.zeros((3, 20, 20), np.int32)
    labels[:, 4:8, 4:8] = 1  # one 3D object through all planes
    checked = regions_mask(labels.shape, [("rectangle", _square(0, 0, 10, 10, 1))])
    ann = annotation_from_edits(labels, labels, checked=checked)
    assert (ann[1, :11, :11] >= 1).all() and ann[1, 5, 5] == 2
    assert not ann[0].any() and not ann[2].any()


def test_checked_region_errors_and_nothing_checked():
    labels = np.zeros((5, 5), np.int32)
    with pytest.raises(NapariUnetError, match="checked regions"):
        annotation_from_edits(labels, labels, checked=np.zeros((4, 5), bool))
    with pytest.raises(NapariUnetError, match="boolean mask"):
        annotation_from_edits(labels, labels, checked=np.zeros((5, 5), np.uint8))
    assert is_empty_annotation(
        annotation_from_edits(labels, labels, checked=np.zeros((5, 5), bool))
    )


def test_merge_later_strokes_win_and_old_keeps_remainder():
    old = np.zeros((3, 7), np.int32)
    old[:, 0:3] = 2
    old[:, 3:6] = 1
    new = np.zeros((3, 7), np.int32)
    new[:, 2:5] = 1  # the user erased a column of the old object (and confirmed background)

    out = merge_annotations(old, new)

    expected = np.zeros((3, 7), np.int32)
    expected[:, 0:2] = 2  # the old object's remainder stays
    expected[:, 2:6] = 1
    np.testing.assert_array_equal(out, expected)


def test_merge_redrawn_old_object_is_dropped_and_ids_stay_unique():
    old = np.zeros((6, 10), np.int32)
    old[0:4, 0:4] = 2  # redrawn later
    old[0:2, 6:8] = 5  # untouched later
    old[4, :] = 1
    new = np.zeros((6, 10), np.int32)
    new[0:2, 0:4] = 2  # redrawn smaller
    new[2, 0:4] = 1
    new[4:6, 6:8] = 3  # a new object over old background

    out = merge_annotations(old, new)

    expected = np.zeros((6, 10), np.int32)
    expected[4, :] = 1
    expected[2, 0:4] = 1
    expected[0:2, 6:8] = 2  # kept old object first
    expected[0:2, 0:4] = 3  # then the new ones
    expected[4:6, 6:8] = 4
    # rows 3 of the old object: neither old (replaced) nor new -> not annotated
    np.testing.assert_array_equal(out, expected)
    ids = np.unique(out[out >= 2])
    np.testing.assert_array_equal(ids, np.arange(2, 2 + ids.size))


def test_merge_same_ids_in_both_rounds_do_not_clash():
    old = np.zeros((2, 6), np.int32)
    old[:, 0:2] = 2
    new = np.zeros((2, 6), np.int32)
    new[:, 4:6] = 2
    out = merge_annotations(old, new)
    np.testing.assert_array_equal(out, [[2, 2, 0, 0, 3, 3]] * 2)
    np.testing.assert_array_equal(merge_annotations(np.zeros((2, 6), int), new), new)
    np.testing.assert_array_equal(merge_annotations(old, np.zeros((2, 6), int)), old)


def test_merge_of_two_rounds_of_edits():
    prediction = np.zeros((12, 20), np.int32)
    prediction[2:6, 2:10] = 1  # merged pair
    prediction[8:11, 14:18] = 2  # false object
    layer = prediction.copy()
    layer[2:6, 6:10] = 3  # round 1: split
    first = annotation_from_edits(layer, prediction, ring=1)
    before = layer.copy()
    layer[layer == 2] = 0  # round 2: erase the false object
    second = annotation_from_edits(layer, before, ring=1)
    merged = merge_annotations(first, second)
    np.testing.assert_array_equal(merged[first != 0], first[first != 0])
    assert (merged[8:11, 14:18] == 1).all()
    assert annotation_summary(merged)["objects"] == 2


def test_merge_shape_mismatch():
    with pytest.raises(ValueError, match=r"\(2, 2\).*\(3, 2\)"):
        merge_annotations(np.zeros((2, 2), int), np.zeros((3, 2), int))


# --------------------------------------------------------------------------- summary / f1


def test_annotation_summary():
    ann = np.array([[0, 1, 1], [2, 2, 7]])
    s = annotation_summary(ann)
    assert s == {
        "objects": 2,
        "object_pixels": 3,
        "background_pixels": 2,
        "annotated_fraction": 5 / 6,
        "fully_annotated": False,
    }
    json.dumps(s)
    assert annotation_summary(to_sparse(np.zeros((2, 2), int)))["fully_annotated"] is True


def test_partial_f1_hand_case():
    ann = np.zeros((10, 20), np.int32)
    ann[0:10, 0:10] = 1  # the annotated left half
    ann[1:4, 1:4] = 2
    ann[6:9, 1:4] = 3
    pred = np.zeros_like(ann)
    pred[1:4, 1:4] = 11  # matches 2
    pred[1:4, 6:9] = 12  # on annotated background: false positive
    pred[5:9, 13:17] = 13  # where nobody looked: ignored
    pred[6:8, 8:12] = 14  # exactly half inside: scored, false positive
    pred[1:3, 9:13] = 15  # a quarter inside: ignored

    r = partial_f1(pred, ann)

    assert (r["tp"], r["fp"], r["fn"]) == (1, 2, 1)
    assert r["n_annotated_objects"] == 2
    assert r["n_scored_predictions"] == 3 and r["n_ignored_predictions"] == 2
    assert r["precision"] == pytest.approx(1 / 3)
    assert r["recall"] == pytest.approx(1 / 2)
    assert r["f1"] == pytest.approx(2 / 5)
    huge_ids = np.where(pred > 0, pred.astype(np.int64) + 10**12, 0)  # the sorting path
    assert partial_f1(huge_ids, ann) == r


def test_partial_f1_iou_threshold():
    ann = np.zeros((4, 8), np.int32)
    ann[:, :4] = 2
    ann[:, 4:] = 1
    pred = np.zeros_like(ann)
    pred[:, 1:5] = 3  # IoU 12 / 20 = 0.6
    assert partial_f1(pred, ann, iou=0.5)["tp"] == 1
    r = partial_f1(pred, ann, iou=0.7)
    assert (r["tp"], r["fp"], r["fn"], r["f1"]) == (0, 1, 1, 0.0)
    with pytest.raises(ValueError):
        partial_f1(pred, ann, iou=1.0)
    with pytest.raises(ValueError, match="shape"):
        partial_f1(pred[:2], ann)


def test_partial_f1_empty_and_background_only():
    pred = np.zeros((5, 5), np.int32)
    pred[1:3, 1:3] = 1
    nothing = partial_f1(pred, np.zeros((5, 5), np.int32))
    assert math.isnan(nothing["f1"]) and nothing["n_annotated_objects"] == 0
    assert nothing["n_ignored_predictions"] == 1

    background = np.zeros((5, 5), np.int32)
    background[3:5, :] = 1  # only confirmed background, away from the prediction
    assert partial_f1(pred, background)["f1"] == 1.0
    background[0:3, 0:3] = 1  # now the predicted object lies on it
    r = partial_f1(pred, background)
    assert (r["fp"], r["f1"]) == (1, 0.0)


def test_partial_f1_full_annotation_equals_plain_f1(dsb_small):
    mask = tifffile.imread(dsb_small[0][1]).astype(np.int32)
    ids = np.unique(mask[mask > 0])
    assert ids.size >= 10
    pred = mask.copy()
    pred[np.isin(pred, ids[:3])] = 0  # missed
    pred[pred == ids[3]] = ids[4]  # merged with a neighbour id (disconnected is fine)
    pred = np.roll(pred, 2, axis=1)  # slightly off
    pred[:6, :6] = pred.max() + 1  # a false object
    ann = to_sparse(mask)

    r = partial_f1(pred, ann)
    ref = evaluate([mask], [pred])
    assert r["f1"] == pytest.approx(ref["f1"])
    assert r["precision"] == pytest.approx(ref["precision"])
    assert r["recall"] == pytest.approx(ref["recall"])
    assert r["n_annotated_objects"] == ref["n_true"] == ids.size
    assert r["n_ignored_predictions"] == 0

    # the same prediction scored on half of the image annotated
    half = ann.copy()
    half[:, mask.shape[1] // 2 :] = 0
    part = partial_f1(pred, half)
    assert part["n_annotated_objects"] < ids.size
    assert part["n_ignored_predictions"] > 0


# --------------------------------------------------------------------------- save / load


def _pairs():
    rng = np.random.default_rng(0)
    grey = rng.integers(0, 4000, (20, 24)).astype(np.uint16)
    grey_lab = np.zeros((20, 24), np.int32)
    grey_lab[2:6, 2:6] = 1
    grey_lab[10:15, 3:9] = 70000  # above uint16
    rgb = rng.integers(0, 255, (16, 18, 3)).astype(np.uint8)
    rgb_lab = np.zeros((16, 18), np.uint16)
    rgb_lab[4:9, 4:9] = 3
    stack = rng.random((4, 12, 14)).astype(np.float32)
    stack_lab = np.zeros((4, 12, 14), np.uint8)
    stack_lab[1:3, 2:6, 2:6] = 1
    flat = rng.random((1, 10, 10)).astype(np.float32)
    sparse = annotation_from_edits(np.pad(np.ones((3, 3), int), 4), ring=1)
    two = rng.random((11, 11, 2)).astype(np.float32)
    return [
        SimpleNamespace(name="cells 1", image=grey, labels=grey_lab, sparse=False),
        SimpleNamespace(name="cells/1", image=rgb, labels=rgb_lab, sparse=False),
        SimpleNamespace(name="núcleos ü 3D", image=stack, labels=stack_lab, sparse=False),
        SavedPair(name="one slice", image=flat, labels=np.zeros((1, 10, 10), np.int32)),
        SavedPair(name="../../evil", image=rng.random((11, 11)), labels=sparse, sparse=True),
        SavedPair(name="two channels", image=two, labels=np.ones((11, 11), np.int32)),
    ]


def test_save_load_round_trip(tmp_path):
    pairs = _pairs()
    folder = tmp_path / "new" / "set"
    written = save_training_set(folder, pairs)
    assert written[-1] == folder / INDEX_FILE
    assert all(p.is_file() and folder in p.parents for p in written)
    assert {p.name for p in (folder / "images").iterdir()} == {
        "cells_1.tif",
        "cells_1-2.tif",
        "n_cleos_3D.tif",
        "one_slice.tif",
        "evil.tif",
        "two_channels.tif",
    }

    loaded = load_training_set(folder)

    assert [p.name for p in loaded] == [p.name for p in pairs]
    for saved, back in zip(pairs, loaded, strict=True):
        assert back.image.shape == saved.image.shape and back.image.dtype == saved.image.dtype
        np.testing.assert_array_equal(back.image, saved.image)
        np.testing.assert_array_equal(back.labels, saved.labels)
        assert back.labels.dtype.kind in "iu"
        assert back.sparse is saved.sparse
    index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    assert index["version"] == 1
    entries = index["pairs"]
    assert [e["has_channels"] for e in entries] == [False, True, False, False, False, True]
    assert entries[2]["name"] == "núcleos ü 3D"
    assert entries[0]["summary"]["objects"] == 2 and entries[0]["summary"]["fully_annotated"]
    assert entries[4]["summary"] == annotation_summary(pairs[4].labels)
    assert entries[4]["sparse"] is True


def test_checked_regions_learned_survive_save_and_load(tmp_path):
    pairs = _pairs()[:2]
    square = _square(1, 1, 3, 3)
    slab = _square(0, 0, 2, 2, 1)  # a region in one plane of a stack (3 coordinates)
    regions = {
        pairs[0].name: [("rectangle", square), ("polygon", slab[:3])],
        "gone": [("ellipse", square)],
    }
    save_training_set(tmp_path / "set", pairs, checked_regions=regions)
    loaded = load_training_set(tmp_path / "set")
    assert [k for k, _ in loaded[0].checked_regions] == ["rectangle", "polygon"]
    np.testing.assert_array_equal(loaded[0].checked_regions[0][1], square)
    assert region_signature(*loaded[0].checked_regions[1]) == region_signature("polygon", slab[:3])
    assert loaded[1].checked_regions == []
    entries = json.loads((tmp_path / "set" / INDEX_FILE).read_text(encoding="utf-8"))["pairs"]
    assert "checked_regions" not in entries[1]  # none: no key (older readers see nothing new)
    # a region moved by a visible amount is another one
    assert region_signature("rectangle", square + 0.01) != region_signature("rectangle", square)
    # bad regions: refused before anything is written
    with pytest.raises(NapariUnetError, match="region 1 is a 'line': only rectangle"):
        save_training_set(
            tmp_path / "bad", pairs, checked_regions={pairs[0].name: [("line", square)]}
        )
    assert not (tmp_path / "bad").exists()


def test_load_damaged_checked_regions(tmp_path):
    pairs = _pairs()[:1]
    save_training_set(
        tmp_path / "set",
        pairs,
        checked_regions={pairs[0].name: [("rectangle", _square(0, 0, 1, 1))]},
    )

    def breaks(entry):
        entry["pairs"][0]["checked_regions"][0]["vertices"] = [[0, "x"], [1, 1], [2, 2]]

    _edit_index(tmp_path / "set", breaks)
    with pytest.raises(NapariUnetError, match="damaged.*checked regions"):
        load_training_set(tmp_path / "set")

    def huge(entry):
        entry["pairs"][0]["checked_regions"] = [
            {"kind": "polygon", "vertices": [[10**400, 0], [1, 1], [2, 0]]}
        ]

    _edit_index(tmp_path / "set", huge)
    with pytest.raises(NapariUnetError, match="damaged.*not a \\(kind, vertices\\) pair"):
        load_training_set(tmp_path / "set")

    def not_a_list(entry):
        entry["pairs"][0]["checked_regions"] = "everywhere"

    _edit_index(tmp_path / "set", not_a_list)
    with pytest.raises(NapariUnetError, match="damaged.*not a list of records"):
        load_training_set(tmp_path / "set")


def test_save_refuses_to_overwrite_then_allows(tmp_path):
    pairs = _pairs()[:2]
    save_training_set(tmp_path, pairs)
    index = tmp_path / INDEX_FILE
    before = index.read_bytes()
    changed = [SavedPair("new one", np.zeros((5, 5)), np.ones((5, 5), int)), *pairs]
    with pytest.raises(NapariUnetError, match="tick overwrite or choose another folder"):
        save_training_set(tmp_path, changed)
    assert index.read_bytes() == before
    assert not (tmp_path / "images" / "new_one.tif").exists()  # nothing written

    save_training_set(tmp_path, changed, overwrite=True)
    assert [p.name for p in load_training_set(tmp_path)] == ["new one", "cells 1", "cells/1"]


def test_save_checks_everything_before_writing(tmp_path):
    good, bad = _pairs()[0], SavedPair("bad", np.zeros((5, 6)), np.zeros((5, 5), int))
    with pytest.raises(NapariUnetError, match=r"\(5, 6\).*\(5, 5\)"):
        save_training_set(tmp_path / "out", [good, bad])
    assert not (tmp_path / "out").exists()
    with pytest.raises(NapariUnetError, match="whole numbers"):
        save_training_set(
            tmp_path / "out", [SavedPair("f", np.zeros((3, 3)), np.full((3, 3), 0.5))]
        )
    with pytest.raises(NapariUnetError, match="nothing to save"):
        save_training_set(tmp_path / "out", [])
    (tmp_path / "file").write_text("x")
    with pytest.raises(NapariUnetError):
        save_training_set(tmp_path / "file", [good])


@pytest.fixture
def saved(tmp_path) -> Path:
    folder = tmp_path / "set"
    save_training_set(folder, _pairs()[:2])
    return folder


def _edit_index(folder: Path, change) -> None:
    index = json.loads((folder / INDEX_FILE).read_text(encoding="utf-8"))
    change(index)
    (folder / INDEX_FILE).write_text(json.dumps(index), encoding="utf-8")


def test_load_missing_folder_and_not_a_training_set(tmp_path):
    with pytest.raises(NapariUnetError, match="does not exist"):
        load_training_set(tmp_path / "nope")
    with pytest.raises(NapariUnetError, match="not a saved training set: it has no training_set"):
        load_training_set(tmp_path)


def test_load_damaged_index(saved):
    (saved / INDEX_FILE).write_text('{"format": "napari-unet training set", "vers', "utf-8")
    with pytest.raises(NapariUnetError, match="damaged"):
        load_training_set(saved)
    (saved / INDEX_FILE).write_text("[1, 2]", "utf-8")
    with pytest.raises(NapariUnetError, match="damaged"):
        load_training_set(saved)


def test_load_unknown_version(saved):
    _edit_index(saved, lambda d: d.update(version=99))
    with pytest.raises(NapariUnetError, match="version 99"):
        load_training_set(saved)


def test_load_refuses_a_stem_outside_the_folder(saved):
    def change(d):
        d["pairs"][0]["stem"] = "../../../etc/passwd"

    _edit_index(saved, change)
    with pytest.raises(NapariUnetError, match="invalid file stem"):
        load_training_set(saved)


@pytest.mark.parametrize("sub", ["images", "labels"])
def test_load_missing_file(saved, sub):
    (saved / sub / "cells_1-2.tif").unlink()
    with pytest.raises(NapariUnetError, match=f"missing.*{sub}/cells_1-2.tif|{sub}/cells_1-2"):
        load_training_set(saved)


def test_load_unreadable_file(saved):
    (saved / "images" / "cells_1.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(NapariUnetError, match="cannot be read"):
        load_training_set(saved)


def test_load_shape_mismatch(saved):
    tifffile.imwrite(saved / "labels" / "cells_1.tif", np.zeros((7, 7), np.uint16))
    with pytest.raises(NapariUnetError, match=r"\(20, 24\).*\(7, 7\)"):
        load_training_set(saved)


def test_load_labels_not_integer(saved):
    tifffile.imwrite(saved / "labels" / "cells_1.tif", np.zeros((20, 24), np.float32))
    with pytest.raises(NapariUnetError, match="not whole numbers"):
        load_training_set(saved)
