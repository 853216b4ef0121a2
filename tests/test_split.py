import numpy as np
import pytest
import tifffile
from _synthetic import touching_discs
from scipy import ndimage as ndi

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.metrics import match_objects, touching_objects
from napari_unet.core.split import labels_from_probabilities, split_nuclei


def _discs(shape, centres, radius):
    """Label image of discs (later ones do not overwrite earlier ones)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    labels = np.zeros(shape, np.int32)
    for k, (cy, cx) in enumerate(centres, 1):
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < radius**2
        labels[disc & (labels == 0)] = k
    return labels


def _assert_consecutive(labels):
    assert labels.dtype == np.int32
    ids = np.unique(labels)
    np.testing.assert_array_equal(ids, np.arange(ids.size))


# ----------------------------------------------------------------------------- split_nuclei


def test_two_overlapping_discs_are_split_in_two():
    truth = _discs((60, 90), [(30, 30), (30, 56)], 16)  # centres 26 apart, radius 16
    labels = split_nuclei(truth > 0)
    _assert_consecutive(labels)
    assert labels.max() == 2
    m = match_objects(truth, labels)
    assert m.tp[0] == 2 and m.ap(0.8) == 1.0
    # the cut runs through the waist, at x = 43
    assert set(np.unique(labels[:, :40])) == {0, 1} and set(np.unique(labels[:, 47:])) == {0, 2}


@pytest.mark.parametrize("smooth", [0.0, 1.0])
def test_single_disc_and_rectangle_stay_whole(smooth):
    assert split_nuclei(_discs((50, 50), [(25, 25)], 15) > 0, smooth=smooth).max() == 1
    # a rectangle's distance map has a flat ridge: one marker, not many
    rect = np.zeros((30, 70), bool)
    rect[5:25, 5:65] = True
    labels = split_nuclei(rect, smooth=smooth)
    assert labels.max() == 1 and (labels > 0).sum() == rect.sum()


def test_label_input_keeps_user_separations():
    labels_in = np.zeros((30, 70), np.uint16)
    labels_in[5:25, 5:35] = 7
    labels_in[5:25, 35:65] = 3  # same rectangle as above, cut by the user
    out = split_nuclei(labels_in)
    assert out.max() == 2
    # every output object lies inside one input label, and the cut is kept
    assert len(np.unique(out[:, :35])) == 2 and len(np.unique(out[:, 35:])) == 2
    np.testing.assert_array_equal(out > 0, labels_in > 0)
    # A label holding two overlapping discs is still split; its neighbour is not merged.
    discs = _discs((60, 120), [(30, 30), (30, 56)], 16)
    labels_in = np.where(discs > 0, 1, 0).astype(np.int32)
    labels_in[14:46, 72:110] = 2  # a rectangle touching the right disc
    assert 1 in touching_objects(labels_in) and 2 in touching_objects(labels_in)
    out = split_nuclei(labels_in)
    assert out.max() == 3
    for k in range(1, 4):
        assert len(np.unique(labels_in[out == k])) == 1


def test_empty_and_all_background():
    for mask in (np.zeros((20, 30), bool), np.zeros((20, 30), np.uint8)):
        out = split_nuclei(mask)
        assert out.shape == mask.shape and out.dtype == np.int32 and not out.any()
    tiny = np.zeros((20, 30), bool)
    tiny[3:5, 3:5] = True  # 4 px < min_size
    assert not split_nuclei(tiny, min_size=10).any()
    assert split_nuclei(tiny, min_size=4).max() == 1


def test_mask_values_and_validation():
    truth = _discs((60, 90), [(30, 30), (30, 56)], 16)
    expected = split_nuclei(truth > 0)
    np.testing.assert_array_equal(split_nuclei((truth > 0).astype(np.uint8) * 255), expected)
    np.testing.assert_array_equal(split_nuclei((truth > 0).astype(np.float32)), expected)
    with pytest.raises(NapariUnetError, match="labels_from_probabilities"):
        split_nuclei(np.full((5, 5), 0.7))
    with pytest.raises(NapariUnetError, match="negative"):
        split_nuclei(-np.ones((5, 5), int))
    with pytest.raises(NapariUnetError, match="2-D"):
        split_nuclei(np.ones(5, bool))
    with pytest.raises(NapariUnetError, match="min_distance"):
        split_nuclei(truth > 0, min_distance=0)
    with pytest.raises(NapariUnetError, match="h must be"):
        split_nuclei(truth > 0, h=-1)


def test_nd_is_split_slice_by_slice_with_unique_ids():
    pair = _discs((60, 90), [(30, 30), (30, 56)], 16) > 0
    single = _discs((60, 90), [(30, 45)], 14) > 0
    stack = np.stack([pair, single, np.zeros_like(pair), pair])
    out = split_nuclei(stack)
    assert out.shape == stack.shape and out.dtype == np.int32
    assert [len(np.unique(s)) - 1 for s in out] == [2, 1, 0, 2]
    _assert_consecutive(out)
    np.testing.assert_array_equal(out[3], np.where(out[0] > 0, out[0] + 3, 0))
    out4 = split_nuclei(stack.reshape(2, 2, 60, 90))
    np.testing.assert_array_equal(out4.reshape(stack.shape), out)


def test_min_size_and_fill_holes():
    ring = _discs((50, 50), [(25, 25)], 15) > 0
    ring[23:27, 23:27] = False  # a 16-px hole
    ring[2:4, 2:4] = True  # a separate 4-px speck
    # (a large min_distance: the hole makes a ring-shaped ridge, see the Notes)
    filled = split_nuclei(ring, min_size=10, min_distance=20)
    assert filled.max() == 1 and filled[25, 25] == 1 and filled[2, 2] == 0
    assert (filled > 0).sum() == np.sum(_discs((50, 50), [(25, 25)], 15) > 0)
    kept = split_nuclei(ring, min_size=10, min_distance=20, fill_holes=False)
    assert kept[25, 25] == 0
    # A hole enclosed by two different objects is not a hole of either.
    pair = np.zeros((20, 20), np.int32)
    pair[2:18, 2:10] = 1
    pair[2:18, 10:18] = 2
    pair[8:12, 8:12] = 0
    out = split_nuclei(pair, fill_holes=True, min_distance=10)
    assert out.max() == 2 and not out[8:12, 8:12].any()


def test_h_maxima_markers():
    truth = _discs((60, 90), [(30, 30), (30, 56)], 16)
    assert split_nuclei(truth > 0, h=1.0).max() == 2
    # The smoothed distance peaks at 14.9 with a waist at 9.3 between the two equal
    # peaks: a larger h keeps one object (skimage's h_maxima would keep both peaks).
    assert split_nuclei(truth > 0, h=4.0).max() == 2
    assert split_nuclei(truth > 0, h=7.0).max() == 1
    assert split_nuclei(truth > 0, h=100.0).max() == 1


def test_nucleus_cut_by_the_image_border_is_kept():
    truth = _discs((40, 80), [(0, 20), (0, 45), (20, 79)], 12)
    out = split_nuclei(truth > 0)
    assert out.max() == 3
    assert match_objects(truth, out).tp[0] == 3


def test_components_are_split_independently():
    """The output inside a component is the same as with that component alone."""
    truth = touching_discs((256, 256), n=30, seed=3)
    mask = truth > 0
    out = split_nuclei(mask, min_size=0)
    components, n = ndi.label(mask, structure=np.ones((3, 3)))
    for k in range(1, n + 1):
        alone = split_nuclei(components == k, min_size=0)
        inside = components == k
        # same partition up to the ids
        pairs = np.unique(np.stack([out[inside], alone[inside]]), axis=1)
        assert pairs.shape[1] == len(np.unique(out[inside])) == len(np.unique(alone[inside]))


def test_synthetic_touching_discs_recovered():
    truth = touching_discs((512, 512), n=60, seed=1)
    assert len(touching_objects(truth)) > 40  # 54 of 60 touch another disc
    out = split_nuclei(truth > 0)
    _assert_consecutive(out)
    m = match_objects(truth, out)
    assert m.f1(0.5) > 0.88  # measured 0.91
    components = ndi.label(truth > 0, structure=np.ones((3, 3)))[0]
    assert match_objects(truth, components).f1(0.5) < 0.5  # measured 0.36: splitting matters


def test_real_masks_touching_nuclei_recovered(dsb_small):
    """Splitting the union of real GT masks recovers most nuclei (measured F1 0.90)."""
    tp = n_true = n_pred = tp_cc = n_cc = 0
    for _, mask_path in dsb_small:
        truth = tifffile.imread(mask_path)
        out = split_nuclei(truth > 0)
        m = match_objects(truth, out)
        tp, n_true, n_pred = tp + m.tp[0], n_true + m.n_true, n_pred + m.n_pred
        cc = match_objects(truth, ndi.label(truth > 0, structure=np.ones((3, 3)))[0])
        tp_cc, n_cc = tp_cc + cc.tp[0], n_cc + cc.n_pred
    f1 = 2 * tp / (n_true + n_pred)
    f1_cc = 2 * tp_cc / (n_true + n_cc)
    assert f1 > 0.87, f1  # measured 0.899
    assert f1 > f1_cc, (f1, f1_cc)  # measured 0.899 vs 0.879 for connected components


# ----------------------------------------------------------------------------- probabilities


def _probability_maps(truth, rim=2):
    """Foreground = objects; boundary = a band of `rim` px inside each object's edge."""
    foreground = (truth > 0).astype(np.float32) * 0.95
    eroded = np.zeros_like(truth)
    for k in range(1, truth.max() + 1):
        eroded[ndi.binary_erosion(truth == k, iterations=rim)] = k
    boundary = ((truth > 0) & (eroded == 0)).astype(np.float32) * 0.9
    return foreground, boundary


def test_probabilities_with_boundary_separate_touching_objects():
    truth = np.zeros((40, 80), np.int32)
    truth[5:35, 5:40] = 1
    truth[5:35, 40:75] = 2  # two rectangles sharing an edge: the distance map cannot split them
    foreground, boundary = _probability_maps(truth)
    out = labels_from_probabilities(foreground, boundary)
    _assert_consecutive(out)
    assert out.max() == 2
    assert match_objects(truth, out).ap(0.9) == 1.0
    # without the boundary map it is one object (a flat ridge, as above)
    assert labels_from_probabilities(foreground).max() == 1


def test_probabilities_on_touching_discs():
    # 16 pairs of discs of radius 10 whose centres are 16 px apart (they overlap)
    centres = [
        (y, x + dx) for y in range(20, 256, 60) for x in range(20, 230, 60) for dx in (0, 16)
    ]
    truth = _discs((256, 256), centres, 10)
    foreground, boundary = _probability_maps(truth)
    rng = np.random.default_rng(0)
    noisy_fg = np.clip(foreground + rng.normal(0, 0.05, truth.shape), 0, 1)
    noisy_bd = np.clip(boundary + rng.normal(0, 0.05, truth.shape), 0, 1)
    out = labels_from_probabilities(noisy_fg, noisy_bd)
    m = match_objects(truth, out)
    assert m.n_true == 32 and m.f1(0.5) == 1.0 and m.ap(0.8) == 1.0
    # without the boundary map the same pairs are split by the distance transform
    assert match_objects(truth, labels_from_probabilities(noisy_fg)).f1(0.5) == 1.0


def test_probabilities_unseeded_object_is_kept_and_options():
    foreground = np.zeros((30, 30), np.float32)
    foreground[5:8, 5:25] = 0.9  # a thin 3-px object ...
    boundary = np.zeros_like(foreground)
    boundary[5:8, 5:25] = 0.8  # ... that is all boundary: no seed
    out = labels_from_probabilities(foreground, boundary)
    assert out.max() == 1 and (out > 0).sum() == 60
    pair = _discs((60, 90), [(30, 30), (30, 56)], 16) > 0
    prob = pair * 0.8
    assert labels_from_probabilities(prob).max() == 2
    assert labels_from_probabilities(prob, split=False).max() == 1
    assert labels_from_probabilities(prob, threshold=0.9).max() == 0
    assert labels_from_probabilities(prob, h=20.0).max() == 1
    np.testing.assert_array_equal(labels_from_probabilities(prob), split_nuclei(pair))


def test_probabilities_nd_and_validation():
    truth = touching_discs((128, 128), n=8, seed=5)
    foreground, boundary = _probability_maps(truth)
    single = labels_from_probabilities(foreground, boundary)
    stack = labels_from_probabilities(np.stack([foreground] * 3), np.stack([boundary] * 3))
    n = single.max()
    assert stack.shape == (3, 128, 128) and stack.max() == 3 * n
    np.testing.assert_array_equal(stack[2], np.where(single > 0, single + 2 * n, 0))
    with pytest.raises(NapariUnetError, match="outside \\[0, 1\\]"):
        labels_from_probabilities(foreground * 255)
    with pytest.raises(NapariUnetError, match="shape"):
        labels_from_probabilities(foreground, boundary[:10])
    with pytest.raises(NapariUnetError, match="NaN"):
        labels_from_probabilities(np.full((4, 4), np.nan))
    with pytest.raises(TypeError, match="min_distanse"):
        labels_from_probabilities(foreground, min_distanse=3)


def test_split_config_defaults_are_split_nuclei_s_and_the_cli_s():
    import inspect

    from napari_unet.cli import build_parser
    from napari_unet.core.split import SplitConfig

    config = SplitConfig()
    defaults = {
        name: p.default
        for name, p in inspect.signature(split_nuclei).parameters.items()
        if name in config.split_kwargs()
    }
    assert config.split_kwargs() == defaults
    args = build_parser().parse_args(["split", "--input", "i", "--out", "o"])
    assert args.threshold == config.threshold
    with pytest.raises(NapariUnetError, match="min_distance"):
        SplitConfig(min_distance=0)
    with pytest.raises(NapariUnetError, match="threshold"):
        SplitConfig(threshold=1.5)


def test_split_image_thresholds_probabilities_as_labels_from_probabilities():
    from napari_unet.core.split import SplitConfig
    from napari_unet.core.volume import split_image

    mask = touching_discs(shape=(160, 160), n=12) > 0
    prob = np.where(mask, 0.9, 0.1).astype(np.float32)
    config = SplitConfig(threshold=0.6)
    expected = labels_from_probabilities(prob, threshold=0.6, **config.split_kwargs())
    np.testing.assert_array_equal(split_image(prob, config, probabilities=True), expected)
    np.testing.assert_array_equal(split_image(mask, config), split_nuclei(mask))
    with pytest.raises(NapariUnetError, match="outside"):
        split_image(prob * 3, config, probabilities=True)
