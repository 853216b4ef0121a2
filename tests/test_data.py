from pathlib import Path

import numpy as np
import pytest

from napari_unet.core.data import (
    Normalisation,
    PatchSampler,
    channels_first,
    find_channel_axis,
    guess_channel_axis,
    prepare_samples,
)
from napari_unet.core.errors import NapariUnetError


def blobs(shape=(64, 80), n=6, seed=0):
    rng = np.random.default_rng(seed)
    img = rng.normal(10, 2, shape).astype(np.float32)
    lab = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    for i in range(1, n + 1):
        cy, cx = rng.integers(8, shape[0] - 8), rng.integers(8, shape[1] - 8)
        disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 25
        lab[disc & (lab == 0)] = i
        img[disc] += 50
    return img, lab


def test_find_channel_axis():
    assert find_channel_axis((10, 12), (10, 12)) is None
    assert find_channel_axis((10, 12, 3), (10, 12)) == 2
    assert find_channel_axis((2, 10, 12), (10, 12)) == 0
    assert find_channel_axis((5, 10, 12, 3), (5, 10, 12)) == 3
    with pytest.raises(NapariUnetError, match="does not match"):
        find_channel_axis((10, 13), (10, 12))
    with pytest.raises(NapariUnetError, match="2D labels"):
        find_channel_axis((5, 10, 12), (10, 12, 7))


@pytest.mark.parametrize(
    ("shape", "in_channels", "axes", "expected"),
    [
        ((512, 512, 3), 3, None, -1),  # RGB, as PNG stores it
        ((512, 512, 2), 1, None, -1),  # grey + alpha
        ((512, 512), 3, None, None),
        ((5, 512, 512), 1, None, None),  # a stack of planes
        ((3, 512, 512), 3, None, 0),  # channels first, for a 3-channel model
        ((3, 512, 512), 1, None, None),
        ((64, 2, 2), 1, None, None),  # a 2-pixel-wide image, not channels
        ((3, 512, 512), 1, "CYX", -3),  # the file says
        ((512, 512, 3), 3, "ZYX", None),
        ((2, 64, 64, 3), 3, "ZYXS", -1),
    ],
)
def test_guess_channel_axis_of_a_file(shape, in_channels, axes, expected):
    assert guess_channel_axis(shape, in_channels, axes=axes) == expected


def test_channels_first_layouts():
    a = np.zeros((4, 5, 3))
    assert channels_first(a, -1).shape == (3, 4, 5)
    assert channels_first(np.zeros((4, 5)), None).shape == (1, 4, 5)
    with pytest.raises(NapariUnetError, match="spatial axis"):
        channels_first(a, 1)


def test_normalisation_percentiles_and_nan():
    img = np.arange(1000, dtype=np.float32).reshape(1, 10, 100)
    n = Normalisation(1, 99)
    lo, hi = n.ranges(img)
    out = n.apply(img, lo, hi)
    assert np.percentile(out, 1) == pytest.approx(0, abs=1e-4)
    assert np.percentile(out, 99) == pytest.approx(1, abs=1e-4)
    img[0, 0, 0] = np.nan
    with pytest.raises(NapariUnetError, match="NaN"):
        n.ranges(img)


def test_polarity_auto_inverts_bright_background_images_only():
    rng = np.random.default_rng(0)
    dark = rng.normal(20, 3, (3, 64, 64)).astype(np.float32)
    dark[:, 20:30, 20:30] += 200  # a bright nucleus on a dark background (fluorescence)
    bright = 255 - dark  # the same scene as brightfield / H&E: dark nucleus on light
    auto, keep = Normalisation(polarity="auto"), Normalisation()
    out_dark = auto.apply(dark, *auto.ranges(dark))
    np.testing.assert_array_equal(out_dark, keep.apply(dark, *keep.ranges(dark)))
    lo, hi = auto.ranges(bright)
    assert np.all(lo > hi)  # swapped ranges mean "invert"
    out_bright = auto.apply(bright, lo, hi)
    assert out_bright[:, 25, 25].min() > 0.9 and np.median(out_bright) < 0.1
    np.testing.assert_allclose(out_bright, out_dark, atol=0.02)  # both look like fluorescence
    assert keep.apply(bright, *keep.ranges(bright))[:, 25, 25].max() < 0.1
    flat = np.full((1, 8, 8), 7.0, np.float32)  # constant: finite, not inverted
    assert np.isfinite(auto.apply(flat, *auto.ranges(flat))).all()
    assert Normalisation.from_dict(auto.to_dict()) == auto
    assert Normalisation.from_dict({"low": 1, "high": 99.8}).polarity == "keep"  # old models
    with pytest.raises(NapariUnetError, match="polarity"):
        Normalisation(polarity="invert")


def test_polarity_auto_inverts_dense_stained_tissue():
    """Dense H&E: tissue fills the image, so the stained channels' medians fall below the
    middle; the background is still bright in red, which decides."""
    rng = np.random.default_rng(1)
    h, w = 96, 96
    # pink tissue everywhere (red bright, green and blue mid), purple nuclei (dark in all)
    img = np.empty((3, h, w), np.float32)
    img[0] = rng.normal(200, 8, (h, w))
    img[1] = rng.normal(110, 15, (h, w))
    img[2] = rng.normal(150, 12, (h, w))
    img[:, :3, :] = 240  # a sliver of bare glass: white
    yy, xx = np.mgrid[:h, :w]
    for cy, cx in [(20, 20), (20, 70), (50, 45), (75, 20), (75, 75)]:
        nucleus = (yy - cy) ** 2 + (xx - cx) ** 2 < 81
        img[0][nucleus], img[1][nucleus], img[2][nucleus] = 100, 50, 110
    sub = img.reshape(3, -1)
    lo, hi = np.percentile(sub, [1, 99.8], axis=1)
    position = (np.median(sub, axis=1) - lo) / (hi - lo)
    assert position.mean() < 0.5 < position.max()  # the old rule (the mean) kept it
    auto = Normalisation(polarity="auto")
    out = auto.apply(img, *auto.ranges(img))
    assert out[:, 50, 45].mean() > np.median(out)  # nuclei came out bright


def test_polarity_auto_on_real_dense_he_tiles():
    from napari_unet.core.io import read_image

    root = Path(__file__).resolve().parents[2] / "shared/data/external/miccai_he_nuclei/images"
    files = sorted(root.glob("*.png")) if root.is_dir() else []
    if not files:
        pytest.skip(f"no MICCAI H&E tiles at {root}")
    auto = Normalisation(polarity="auto")
    for f in files:  # every H&E tile has a bright background: all are inverted
        img = np.moveaxis(read_image(f), -1, 0).astype(np.float32)
        lo, hi = auto.ranges(img)
        assert np.all(lo > hi), f.name


def test_constant_image_does_not_blow_up():
    n = Normalisation()
    img = np.full((1, 8, 8), 7.0, np.float32)
    out = n.apply(img, *n.ranges(img))
    assert np.isfinite(out).all()


def test_prepare_samples_checks_and_stacks():
    img, lab = blobs()
    s = prepare_samples([img], [lab], normalisation=Normalisation())
    assert len(s) == 1 and s[0].image.shape == (1, 64, 80) and s[0].image.dtype == np.float32
    stack = prepare_samples(
        [np.stack([img, img])], [np.stack([lab, lab])], normalisation=Normalisation()
    )
    assert len(stack) == 2
    with pytest.raises(NapariUnetError, match="all zero"):
        prepare_samples([img], [np.zeros_like(lab)], normalisation=Normalisation())
    with pytest.raises(NapariUnetError, match="does not match"):
        prepare_samples([img], [lab[:-1]], normalisation=Normalisation())
    with pytest.raises(NapariUnetError, match="channel"):
        prepare_samples(
            [np.zeros((64, 80, 2)), np.zeros((64, 80, 3))],
            [lab, lab],
            normalisation=Normalisation(),
        )


def test_grey_and_rgb_mix_to_rgb():
    img, lab = blobs()
    rgb = np.stack([img] * 3, axis=-1)
    s = prepare_samples([img, rgb], [lab, lab], normalisation=Normalisation())
    assert [x.image.shape[0] for x in s] == [3, 3]


@pytest.mark.parametrize("shape", [(64, 80), (20, 30), (300, 16)])
def test_patch_sampler_shapes_and_padding(shape):
    img, lab = blobs(shape if min(shape) > 16 else (64, 80))
    if shape != img.shape:
        img, lab = np.resize(img, shape), np.resize(lab, shape)
    s = prepare_samples([img], [lab], normalisation=Normalisation())
    ps = PatchSampler(s, 48, 5, 2, seed=1, augment=False)
    x, y, w = ps.batch()
    assert x.shape == (5, 1, 48, 48) and y.shape == (5, 2, 48, 48) and w.shape == y.shape
    assert x.dtype == y.dtype == w.dtype == np.float32
    # padding beyond a small image is ignored by the loss, the image itself counts
    if shape[0] < 48:
        assert (w[:, :, shape[0] :, :] == 0).all()
        assert (w[:, 0, : shape[0], : min(48, shape[1])] > 0).all()
    if shape[1] < 48:
        assert (w[:, :, :, shape[1] :] == 0).all()


def test_augmentation_keeps_image_and_targets_aligned():
    img, lab = blobs()
    s = prepare_samples([img], [lab], normalisation=Normalisation())
    ps = PatchSampler(s, 32, 16, 1, augment=True, seed=3)
    x, y, _ = ps.batch()
    # nuclei are bright: image is higher inside the foreground target in every patch
    for xi, yi in zip(x, y, strict=True):
        if 0 < yi[0].sum() < yi[0].size:
            assert xi[0][yi[0] > 0].mean() > xi[0][yi[0] == 0].mean()


def test_sampler_draws_images_with_a_high_loss_more_often():
    img, lab = blobs()
    s = prepare_samples([img] * 3, [lab] * 3, normalisation=Normalisation())
    ps = PatchSampler(s, 32, 3, 1, seed=0, by_loss=1.0)
    np.testing.assert_allclose(ps.p, 1 / 3)  # same areas: same chance
    ps.batch()
    ps.last_indices = np.array([0, 1, 2])
    ps.report_losses(np.array([1.0, 1.0, 3.0]))
    np.testing.assert_allclose(ps.p, [0.2, 0.2, 0.6])  # 3x the median loss: 3x as often
    counts = np.bincount(np.concatenate([ps.rng.choice(3, 1000, p=ps.p)]), minlength=3)
    assert counts[2] > 2 * counts[0]
    ps.last_indices = np.array([2, 1, 0])
    ps.report_losses(np.array([100.0, np.nan, 1.0]))  # a NaN is skipped
    assert ps.image_loss[1] == 1.0
    np.testing.assert_allclose(ps.p, np.array([1, 1, 4]) / 6)  # at most 4x
    # a report that does not match the batch, or sampling by area only: nothing changes
    before = ps.p.copy()
    ps.report_losses(np.array([5.0]))
    np.testing.assert_array_equal(ps.p, before)
    off = PatchSampler(s, 32, 3, 1, seed=0)
    off.batch()
    off.report_losses(np.array([1.0, 1.0, 30.0]))
    np.testing.assert_allclose(off.p, 1 / 3)


def test_interface_weight_reaches_the_boundary_channel_only():
    lab = np.zeros((64, 64), np.int32)
    lab[10:40, 10:32] = 1
    lab[10:40, 32:54] = 2
    img = np.where(lab > 0, 50.0, 10.0).astype(np.float32)
    img[:, 31:33] = 30.0
    kwargs = dict(normalisation=Normalisation())
    plain = prepare_samples([img], [lab], **kwargs)
    heavy = prepare_samples([img], [lab], interface_weight=4.0, **kwargs)
    a = PatchSampler(plain, 64, 1, 2, seed=0, augment=False).batch()[2][0]
    b = PatchSampler(heavy, 64, 1, 2, seed=0, augment=False).batch()[2][0]
    np.testing.assert_array_equal(a[0], b[0])  # foreground loss unchanged
    assert (b[1][10:40, 30:34] == 5).all() and (a[1][10:40, 30:34] == 1).all()
    assert b[1].sum() == a[1].sum() + 4 * 30 * 4


def test_zoom_resizes_patches_and_rebuilds_thin_boundaries():
    from scipy import ndimage as ndi

    lab = np.zeros((120, 120), np.int32)
    lab[30:90, 30:90] = 1  # one 60-pixel square: its size in a patch shows the zoom
    img = np.where(lab > 0, 80.0, 10.0).astype(np.float32)
    s = prepare_samples([img], [lab], normalisation=Normalisation())
    plain = PatchSampler(s, 48, 64, 2, seed=0, fg_fraction=1.0)
    zoomed = PatchSampler(s, 48, 64, 2, seed=0, fg_fraction=1.0, zoom=1.0)
    px, py, pw = plain.batch()
    x, y, w = zoomed.batch()
    assert x.shape == px.shape and y.shape == py.shape and w.shape == pw.shape
    # the image and its targets stay aligned: the bright square is the foreground
    assert np.corrcoef(x[:, 0].ravel(), y[:, 0].ravel())[0, 1] > 0.9
    # the boundary is rebuilt after resizing: the one-pixel rim of the (single) object
    for fg, bnd in zip(y[:, 0] > 0.5, y[:, 1] > 0.5, strict=True):
        rim = fg & ~ndi.binary_erosion(fg, border_value=1)
        np.testing.assert_array_equal(bnd, rim)

    # the 60-pixel square never fits in a 48-pixel patch, unless the patch was zoomed out
    def whole(fg):
        return fg.any() and not (fg[0].any() or fg[-1].any() or fg[:, 0].any() or fg[:, -1].any())

    assert not any(whole(fg) for fg in py[:, 0] > 0.5)
    assert any(whole(fg) for fg in y[:, 0] > 0.5)
    assert (w > 0).all() and (pw > 0).all()


def test_zoomed_patches_keep_the_contact_gap():
    from scipy import ndimage as ndi

    lab = np.zeros((96, 96), np.int32)
    lab[20:76, 10:48] = 1
    lab[20:76, 48:86] = 2  # touch along x = 47 | 48
    img = np.where(lab > 0, 80.0, 10.0).astype(np.float32)
    s = prepare_samples([img], [lab], normalisation=Normalisation(), contact_gap=1)
    assert not s[0].targets.foreground[:, 47:49].any()
    assert s[0].targets.foreground[20:76, 10:47].all()
    sampler = PatchSampler(s, 96, 1, 2, seed=0, zoom=0.5)
    sampler._crop_origin = lambda sample, window: (0, 0)  # no random crop or flips here
    sampler._augment = lambda img, tgt, w: (img, tgt, w)
    for window in (96, 64):  # the same size, and enlarged 1.5 times
        _, y, _ = sampler._zoomed(s[0], window)
        fg = y[0] > 0.5
        assert ndi.label(fg)[1] == 2  # the resized objects stay apart
        assert (y[1] > 0.5).any()


def test_one_nan_in_a_large_image_and_float64_overflow_are_found():
    from napari_unet.core.data import Normalisation
    from napari_unet.core.errors import NapariUnetError

    big = np.random.default_rng(0).random((1, 2100, 2100), dtype=np.float32)
    big[0, 5, 7] = np.nan  # beyond the 4-Mpixel subsample the percentiles use
    with pytest.raises(NapariUnetError, match=r"NaN or infinite values \(1 of 4410000"):
        Normalisation().ranges(big)
    huge = np.ones((1, 64, 64))
    huge[0, 1, 1] = 1e300  # finite, but not as float32: not "NaN or infinite"
    with pytest.raises(NapariUnetError, match=r"values up to 1e\+300.*rescale"):
        Normalisation().ranges(huge)
