"""Property-based tests (hypothesis): random shapes, dtypes and values never crash the
core, outputs have the documented shape and dtype, and labels are kept exactly."""

import tempfile
from pathlib import Path

import numpy as np
import tifffile
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from scipy import ndimage as ndi

from napari_unet.core.io import (
    labels_to_rle,
    read_labels,
    rle_decode,
    rle_encode,
    write_labels_tiff,
)
from napari_unet.core.metrics import evaluate, match_objects
from napari_unet.core.split import labels_from_probabilities, split_nuclei
from napari_unet.core.targets import make_targets

FEW = settings(max_examples=25, deadline=None)

LABEL_DTYPES = {np.uint8: 255, np.uint16: 2**16 - 1, np.uint32: 2**32 - 1, np.int32: 2**31 - 1}


def shapes_2d(low=1, high=24):
    return st.tuples(st.integers(low, high), st.integers(low, high))


@st.composite
def label_arrays(draw, max_value=None, ndims=(2,), high=24):
    """A label array of a random dtype and shape; values up to the dtype's maximum."""
    dtype = draw(st.sampled_from(sorted(LABEL_DTYPES, key=str)))
    top = LABEL_DTYPES[dtype] if max_value is None else min(max_value, LABEL_DTYPES[dtype])
    ndim = draw(st.sampled_from(ndims))
    shape = (
        draw(shapes_2d(1, high))
        if ndim == 2
        else (draw(st.integers(1, 3)),) + draw(shapes_2d(1, high))
    )
    return draw(arrays(dtype, shape, elements=st.integers(0, top)))


# ----------------------------------------------------------------------------- TIFF


@FEW
@given(label_arrays(ndims=(2, 3), high=12))
def test_tiff_round_trip_keeps_every_label(labels):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "labels.tif"
        write_labels_tiff(path, labels)
        raw = tifffile.imread(path)
        back = read_labels(path)
    # A one-plane ImageJ stack (1, Y, X) reads back as (Y, X): tifffile drops the
    # length-1 axis, for images and labels alike. Every value is kept.
    squeezed = labels.shape[1:] if labels.ndim == 3 and labels.shape[0] == 1 else labels.shape
    assert raw.shape == back.shape and back.shape in (labels.shape, squeezed)
    assert raw.dtype.kind == "u" and back.dtype.kind == "u"
    expected = labels.reshape(back.shape).astype(np.int64)
    np.testing.assert_array_equal(raw.astype(np.int64), expected)
    np.testing.assert_array_equal(back.astype(np.int64), expected)


# ----------------------------------------------------------------------------- targets


@FEW
@given(
    label_arrays(max_value=6),
    st.booleans(),
    st.integers(1, 3),
    st.sampled_from([0.0, 5.0]),
)
def test_make_targets_shapes_and_boundary_inside_foreground(labels, sparse, width, w0):
    t = make_targets(labels, sparse=sparse, boundary_width=width, border_weight=w0)
    for name in ("foreground", "boundary", "valid"):
        arr = getattr(t, name)
        assert arr.shape == labels.shape and arr.dtype == np.uint8, name
        assert set(np.unique(arr)) <= {0, 1}, name
    assert not (t.boundary & ~t.foreground).any()  # boundary within foreground
    assert not (t.foreground & ~t.valid).any()  # objects are annotated pixels
    objects = labels >= 2 if sparse else labels != 0
    np.testing.assert_array_equal(t.foreground.astype(bool), objects)
    if w0 == 0:
        assert t.weight is None
    else:
        assert t.weight.shape == labels.shape and t.weight.dtype == np.float32
        assert np.all(t.weight >= 1) and np.all(np.isfinite(t.weight))


# ----------------------------------------------------------------------------- splitting


@FEW
@given(
    arrays(bool, shapes_2d(1, 32)),
    st.integers(1, 5),
    st.sampled_from([0.0, 1.0]),
    st.integers(0, 8),
    st.booleans(),
)
def test_split_nuclei_on_random_masks(mask, min_distance, smooth, min_size, fill_holes):
    lab = split_nuclei(
        mask, min_distance=min_distance, smooth=smooth, min_size=min_size, fill_holes=fill_holes
    )
    assert lab.shape == mask.shape and lab.dtype == np.int32
    allowed = ndi.binary_fill_holes(mask) if fill_holes else mask
    assert not (lab[~allowed] != 0).any()  # 0 where the mask is 0 (holes may be filled)
    ids = np.unique(lab[lab != 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))  # 1..N


@FEW
@given(label_arrays(max_value=5))
def test_split_nuclei_never_merges_labels(labels):
    lab = split_nuclei(labels, min_size=0, fill_holes=False)
    assert lab.shape == labels.shape and lab.dtype == np.int32
    assert not (lab[labels == 0] != 0).any()
    for obj in np.unique(lab[lab != 0]):
        assert len(np.unique(labels[lab == obj])) == 1  # each object within one input label


@FEW
@given(
    shapes_2d(1, 32).flatmap(
        lambda s: st.tuples(
            arrays(np.float32, s, elements=st.floats(0, 1, width=32)),
            st.one_of(st.none(), arrays(np.float32, s, elements=st.floats(0, 1, width=32))),
        )
    ),
    st.floats(0.05, 0.95),
    st.booleans(),
)
def test_labels_from_probabilities_on_random_maps(maps, threshold, split):
    fg, bd = maps
    lab = labels_from_probabilities(
        fg, bd, threshold=threshold, split=split, min_size=0, fill_holes=False
    )
    assert lab.shape == fg.shape and lab.dtype == np.int32
    assert not (lab[fg <= threshold] != 0).any()  # 0 where the mask (fg > threshold) is 0


# ----------------------------------------------------------------------------- metrics


@st.composite
def label_pairs(draw):
    shape = draw(shapes_2d(1, 16))
    values = st.integers(0, 6)
    return (
        draw(arrays(np.int32, shape, elements=values)),
        draw(arrays(np.uint16, shape, elements=values)),
    )


@FEW
@given(label_pairs())
def test_scores_lie_in_unit_interval(pair):
    gt, pred = pair
    m = match_objects(gt, pred)
    for t in (0.5, 0.75, 0.95):
        for score in (m.precision(t), m.recall(t), m.f1(t)):
            assert 0.0 <= score <= 1.0
    result = evaluate([gt, pred], [pred, gt])
    for key in ("precision", "recall", "f1", "ap50", "dsb_score", "pq", "dice", "iou"):
        assert 0.0 <= result[key] <= 1.0, key
    assert all(0.0 <= v <= 1.0 for v in result["ap_by_threshold"].values())


@FEW
@given(label_pairs())
def test_identical_labels_score_one(pair):
    gt, _ = pair
    m = match_objects(gt, gt.astype(np.uint32))
    assert m.f1(0.5) == 1.0 and m.f1(0.95) == 1.0
    result = evaluate([gt], [gt])
    assert result["f1"] == 1.0 and result["dsb_score"] == 1.0


# ----------------------------------------------------------------------------- RLE


@FEW
@given(arrays(np.uint16, shapes_2d(1, 12), elements=st.integers(0, 7)))
def test_rle_round_trip_rebuilds_the_labels(labels):
    values = [v for v in np.unique(labels) if v != 0]
    rebuilt = np.zeros_like(labels)
    for v, rle in zip(values, labels_to_rle(labels), strict=True):
        mask = rle_decode(rle, labels.shape)
        np.testing.assert_array_equal(mask, labels == v)
        assert rle_encode(mask) == rle
        rebuilt[mask] = v
    np.testing.assert_array_equal(rebuilt, labels)


# ----------------------------------------------------------------------------- prediction

_MODELS: dict = {}


def _tiny_model(in_channels):
    """An untrained tiny UNet per channel count (prediction takes milliseconds)."""
    if in_channels not in _MODELS:
        import torch

        from napari_unet.core.checkpoint import new_bundle
        from napari_unet.core.model import UNetSpec

        torch.manual_seed(0)
        spec = UNetSpec(in_channels=in_channels, out_channels=2, depth=2, base_channels=4)
        _MODELS[in_channels] = new_bundle(spec, {"outputs": ["foreground", "boundary"]})
    return _MODELS[in_channels]


IMAGE_DTYPES = {
    np.uint8: st.integers(0, 255),
    np.uint16: st.integers(0, 2**16 - 1),
    np.int16: st.integers(-(2**15), 2**15 - 1),
    np.float32: st.floats(-1e6, 1e6, width=32),
    np.float64: st.floats(-1e30, 1e30),
}


@st.composite
def images(draw):
    """2D grey, RGB or a small stack; any dtype; shapes from 1 pixel up."""
    dtype = draw(st.sampled_from(sorted(IMAGE_DTYPES, key=str)))
    kind = draw(st.sampled_from(["grey", "rgb", "stack"]))
    yx = draw(shapes_2d(1, 70))
    shape = {"grey": yx, "rgb": yx + (3,), "stack": (draw(st.integers(1, 2)),) + yx}[kind]
    return kind, draw(arrays(dtype, shape, elements=IMAGE_DTYPES[dtype]))


@FEW
@given(
    images(),
    st.sampled_from([16, 32, 48, 512]),
    st.integers(0, 40),
    st.booleans(),
    st.sampled_from(["distance", "boundary"]),
)
def test_prediction_on_random_images(case, tile, overlap, split, method):
    from napari_unet.core.predict import PredictConfig, predict

    kind, image = case
    model = _tiny_model(3 if kind == "rgb" else 1)
    config = PredictConfig(
        tile_size=tile, overlap=overlap, device="cpu", split=split, split_method=method
    )
    result = predict(model, image, channel_axis=-1 if kind == "rgb" else None, config=config)
    spatial = image.shape[:-1] if kind == "rgb" else image.shape
    assert result.labels.shape == spatial and result.labels.dtype == np.uint32
    for name in ("foreground", "boundary"):
        prob = result.probabilities[name]
        assert prob.shape == spatial and prob.dtype == np.float32
        assert np.all((prob >= 0) & (prob <= 1))
    # ids are 1..n with no gaps across the slices of a stack
    ids = np.unique(result.labels[result.labels > 0])
    np.testing.assert_array_equal(ids, np.arange(1, ids.size + 1))
