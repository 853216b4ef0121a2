"""Object size normalisation, appearance augmentation and patch workers in training."""

import numpy as np
import pytest
from _synthetic import nuclei_image

from napari_unet.core.batches import BatchStream
from napari_unet.core.data import (
    Normalisation,
    PatchSampler,
    median_object_diameter,
    prepare_samples,
    resize_pair,
)
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.train import TrainConfig, train


def _disc_labels(shape, centres, radius):
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    lab = np.zeros(shape, np.int32)
    for i, (cy, cx) in enumerate(centres, 1):
        lab[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = i
    return lab


def test_median_object_diameter_of_discs_and_masks():
    lab = _disc_labels((200, 200), [(40, 40), (40, 140), (140, 90)], 15)
    assert median_object_diameter(lab) == pytest.approx(30, rel=0.05)
    # a binary mask counts its connected components, sparse labels their objects >= 2
    assert median_object_diameter(lab > 0) == pytest.approx(30, rel=0.05)
    sparse = np.where(lab > 0, lab + 1, 0)
    sparse[:5] = 1  # annotated background
    assert median_object_diameter(sparse, sparse=True) == pytest.approx(30, rel=0.05)
    assert np.isnan(median_object_diameter(np.zeros((10, 10), np.int32)))


def test_resize_pair_keeps_ids_and_scales_objects():
    lab = _disc_labels((100, 120), [(30, 30), (60, 80)], 10)
    img = (lab > 0).astype(np.float32)[None]
    img2, lab2 = resize_pair(img, lab, 0.5)
    assert img2.shape == (1, 50, 60) and lab2.shape == (50, 60)
    assert set(np.unique(lab2)) == {0, 1, 2}
    assert median_object_diameter(lab2) == pytest.approx(10, rel=0.15)
    img3, lab3 = resize_pair(img, lab, 2.0)
    assert lab3.shape == (200, 240) and median_object_diameter(lab3) == pytest.approx(40, rel=0.1)


def test_prepare_samples_normalises_object_size():
    small = nuclei_image((96, 96), n=8, radius=5, seed=1)  # about 10 px across
    large = nuclei_image((192, 192), n=8, radius=14, seed=2)  # about 28 px across
    samples = prepare_samples(
        [small[0], large[0]],
        [small[1], large[1]],
        normalisation=Normalisation(),
        object_diameter=20,
    )
    for s in samples:
        assert s.scale != 1.0
        assert median_object_diameter(s.targets.instances) == pytest.approx(20, rel=0.15)
        assert s.image.shape[-2:] == s.targets.foreground.shape
    assert samples[0].scale > 1 > samples[1].scale
    assert samples[0].diameter == pytest.approx(median_object_diameter(small[1]))
    # off: images keep their size
    plain = prepare_samples([small[0]], [small[1]], normalisation=Normalisation())
    assert plain[0].scale == 1.0 and plain[0].image.shape[-2:] == (96, 96)


def test_style_augmentation_changes_appearance_not_targets():
    img, lab = nuclei_image((128, 128), n=10, radius=7, seed=3)
    rgb = np.stack([img, img * 0.8, img * 0.5], axis=-1)
    samples = prepare_samples([rgb], [lab], normalisation=Normalisation())
    plain = PatchSampler(samples, 64, 32, 2, seed=5, style=False)
    styled = PatchSampler(samples, 64, 32, 2, seed=5, style=True)
    x0, y0, w0 = plain.batch()
    x1, y1, w1 = styled.batch()
    # the first patch is cut and turned alike (the style draws come after): same targets
    np.testing.assert_array_equal(y0[0], y1[0])
    np.testing.assert_array_equal(w0[0], w1[0])
    assert np.isfinite(x1).all() and x1.dtype == np.float32
    assert not np.allclose(x0[0], x1[0])


def test_style_grey_conversion(monkeypatch):
    from napari_unet.core import data

    only_grey = {**data.STYLE_AUGMENT, "grey": 1.0, "gamma": 0, "blur": 0, "noise": 0}
    monkeypatch.setattr(data, "STYLE_AUGMENT", only_grey)
    img, lab = nuclei_image((64, 64), n=4, radius=6, seed=3)
    rgb = np.stack([img, img * 0.8, img * 0.5])
    out = PatchSampler([], 32, 1, 2, seed=0, style=True)._style(rgb)
    np.testing.assert_allclose(out[0], rgb.mean(axis=0), rtol=1e-6)
    np.testing.assert_array_equal(out[0], out[2])


def test_batch_stream_workers_give_different_patches():
    img, lab = nuclei_image((128, 128), n=10, radius=7, seed=4)
    samples = prepare_samples([img], [lab], normalisation=Normalisation())
    sampler = PatchSampler(samples, 32, 4, 2, seed=0)
    stream = BatchStream(sampler, 2, seed=0)
    try:
        batches = [stream.next() for _ in range(4)]
    finally:
        stream.close()
    x = [b[0].numpy() for b in batches]
    assert all(a.shape == (4, 1, 32, 32) for a in x)
    assert not np.allclose(x[0], x[1])  # the two workers draw their own patches


def test_train_records_object_size_and_fine_tune_keeps_it():
    img, lab = nuclei_image((96, 96), n=8, radius=6, seed=0)
    imgs, labs = [img, np.fliplr(img).copy()], [lab, np.fliplr(lab).copy()]
    cfg = TrainConfig(epochs=1, steps_per_epoch=2, patch_size=32, batch_size=2, object_diameter=24)
    result = train(imgs, labs, cfg)
    meta = result.bundle.meta
    assert meta["object_diameter"] == 24.0
    assert meta["train_diameters"]["p50"] == pytest.approx(median_object_diameter(lab), rel=0.01)
    # fine-tuning keeps the model's own scale, whatever the config says
    again = train(
        imgs,
        labs,
        TrainConfig(epochs=1, steps_per_epoch=1, patch_size=32, batch_size=2),
        init=result.bundle,
    )
    assert again.bundle.meta["object_diameter"] == 24.0
    assert again.bundle.meta["train_config"]["object_diameter"] == 24.0


@pytest.mark.parametrize("bad", [0, 2, 500, float("nan"), "20"])
def test_object_diameter_validated(bad):
    with pytest.raises(NapariUnetError, match="object_diameter"):
        TrainConfig(object_diameter=bad).validate()


@pytest.mark.parametrize("bad", [-1, 1.5, 1000])
def test_workers_validated(bad):
    with pytest.raises(NapariUnetError, match="workers"):
        TrainConfig(workers=bad).validate()
