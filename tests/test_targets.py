import numpy as np
import pytest

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.targets import (
    border_weights,
    check_labels,
    interfaces,
    is_binary_mask,
    make_targets,
)


def two_touching():
    lab = np.zeros((20, 30), np.int32)
    lab[5:15, 3:15] = 1
    lab[5:15, 15:27] = 2
    return lab


def test_instance_targets_mark_the_interface():
    t = make_targets(two_touching())
    assert t.boundary_valid
    assert t.foreground.sum() == 10 * 24
    # both sides of the interface between the two objects are boundary
    assert t.boundary[10, 14] and t.boundary[10, 15]
    # deep inside an object is not
    assert not t.boundary[10, 8]
    # boundary only inside objects
    assert not (t.boundary & (t.foreground == 0)).any()
    assert t.valid.all()
    assert set(np.unique(t.instances)) == {0, 1, 2}


def test_binary_mask_does_not_supervise_boundaries_between_merged_objects():
    mask = (two_touching() > 0).astype(np.uint8) * 255
    t = make_targets(mask)
    assert is_binary_mask(mask)
    # one connected component: its outline is still a valid boundary
    assert t.boundary_valid
    mask2 = mask.copy()
    mask2[0:3, 0:3] = 255  # a second, separate component: touching objects may hide inside
    assert not make_targets(mask2).boundary_valid


def test_sparse_convention():
    lab = np.zeros((20, 30), np.int32)  # 0 = not annotated
    lab[0:4, :] = 1  # painted background
    lab[5:15, 3:15] = 2
    lab[5:15, 15:27] = 3
    t = make_targets(lab, sparse=True)
    assert t.valid[0:4].all() and t.valid[5:15, 3:27].all()
    assert not t.valid[17:, :].any()
    assert t.foreground[0:4].sum() == 0
    assert t.foreground.sum() == 240
    assert t.boundary[10, 14] and t.boundary[10, 15]


def test_border_weights_peak_between_close_objects():
    lab = np.zeros((40, 60), np.int32)
    lab[10:30, 5:28] = 1
    lab[10:30, 30:55] = 2  # 2-pixel gap at columns 28-29
    w = border_weights(lab, w0=10, sigma=5)
    assert w[20, 28] > 9.0  # d1 + d2 = 1 + 2: close to 1 + w0
    assert w[0, 0] < 2.0
    assert (w[lab > 0] == 1).all()
    t = make_targets(lab, border_weight=10)
    assert t.weight is not None and t.weight.max() == pytest.approx(w.max())


@pytest.mark.parametrize(
    "bad,match",
    [
        (np.array([[0.5, 1.0]]), "whole numbers"),
        (np.array([[-1, 2]]), "negative"),
        (np.array([[np.nan, 1.0]]), "whole numbers"),
    ],
)
def test_bad_labels(bad, match):
    with pytest.raises(NapariUnetError, match=match):
        check_labels(bad)


def test_float_labels_with_whole_values_are_accepted():
    out = check_labels(np.array([[0.0, 2.0], [3.0, 0.0]]))
    assert out.dtype.kind in "iu" and out.max() == 3


def test_large_label_values_are_kept():
    lab = np.zeros((10, 10), np.uint32)
    lab[2:5, 2:5] = 70000
    lab[6:9, 6:9] = 70001
    t = make_targets(lab)
    assert set(np.unique(t.instances)) == {0, 70000, 70001}


def test_interfaces_mark_where_objects_touch_not_their_outer_edge():
    lab = np.zeros((8, 14), int)
    lab[1:7, 1:7] = 1
    lab[1:7, 7:13] = 2  # touches 1 along x = 6 | 7
    lab[1:4, 13] = 0
    band = interfaces(lab, 1)
    assert band[1:7, 6].all() and band[1:7, 7].all()  # both sides of the contact
    assert band.sum() == 12
    wide = interfaces(lab, 2)
    assert wide[1:7, 5:9].all() and wide.sum() == 24
    assert not wide[lab == 0].any()
    apart = np.zeros((8, 14), int)
    apart[1:7, 1:6] = 1
    apart[1:7, 7:13] = 2  # a background column between them
    assert not interfaces(apart, 2).any()


def test_interface_weight_weighs_the_boundary_loss_where_objects_touch():
    lab = np.zeros((8, 14), int)
    lab[1:7, 1:7] = 1
    lab[1:7, 7:13] = 2
    assert make_targets(lab).boundary_weight is None  # off by default
    t = make_targets(lab, interface_weight=9.0)
    w = t.boundary_weight
    assert w.dtype == np.float32 and w.shape == lab.shape
    assert (w[1:7, 5:9] == 10).all()
    assert (w[:, :5] == 1).all() and (w[:, 9:] == 1).all() and (w[lab == 0] == 1).all()
    # a binary mask does not say where objects meet: nothing is weighted
    merged = (lab > 0).astype(np.uint8)
    merged[1:3, 13] = 1
    merged[5:7, 13] = 1  # a second object apart from the first: boundaries unsupervised
    merged[3:5, 13] = 0
    merged[:, 12] = 0
    binary = make_targets(merged, interface_weight=9.0)
    assert not binary.boundary_valid and (binary.boundary_weight == 1).all()


def test_contact_gap_parts_touching_objects_in_the_foreground_target():
    lab = np.zeros((8, 14), int)
    lab[1:7, 1:7] = 1
    lab[1:7, 7:13] = 2  # touches 1 along x = 6 | 7
    plain = make_targets(lab)
    assert plain.contact_gap == 0 and plain.foreground[1:7, 1:13].all()  # off by default
    t = make_targets(lab, contact_gap=1)
    fg = t.foreground.astype(bool)
    assert t.contact_gap == 1
    assert not fg[:, 6:8].any()  # a 2-pixel gap: one pixel of each object
    assert fg[1:7, 1:6].all() and fg[1:7, 8:13].all()  # the rest, outer edges included
    # the other targets are unchanged: the boundary still marks the interface
    np.testing.assert_array_equal(t.boundary, plain.boundary)
    np.testing.assert_array_equal(t.instances, plain.instances)
    assert not make_targets(lab, contact_gap=2).foreground[:, 5:9].any()
    # a binary mask does not say where objects touch: no gap
    binary = make_targets((lab > 0).astype(np.uint8), contact_gap=1)
    assert binary.foreground[1:7, 1:13].all()
