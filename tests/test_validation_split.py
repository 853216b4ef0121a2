"""Few images: validation holds back a strip of each image, not whole images (issue 19)."""

import numpy as np
import pytest
from _synthetic import nuclei_image

from napari_unet.core.data import Normalisation, PatchSampler, crop_sample, prepare_samples
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.train import TrainConfig, iter_train
from napari_unet.core.validation import split_validation

TINY = dict(
    epochs=1, steps_per_epoch=2, batch_size=2, patch_size=32, depth=2, base_channels=4, device="cpu"
)


def _pairs(n, shape=(320, 128), objects=30):
    pairs = [nuclei_image(shape=shape, n=objects, seed=s) for s in range(n)]
    return [p[0] for p in pairs], [p[1] for p in pairs]


def _samples(images, labels, **kw):
    return prepare_samples(images, labels, normalisation=Normalisation(), **kw)


def _same_targets(a, b):
    ta, tb = a.targets, b.targets
    for f in ("foreground", "boundary", "valid", "weight", "instances", "boundary_weight"):
        x, y = getattr(ta, f), getattr(tb, f)
        assert (x is None) == (y is None), f
        if x is not None:
            np.testing.assert_array_equal(x, y, err_msg=f)


def test_crop_sample_cuts_the_image_and_every_target():
    img, lab = nuclei_image(shape=(120, 100), n=20, seed=3)
    (s,) = _samples([np.stack([img, img**2], -1)], [lab], border_weight=10, interface_weight=2)
    assert s.targets.weight is not None and s.targets.boundary_weight is not None
    c = crop_sample(s, slice(10, 70), slice(None, -20))
    assert c.shape == (60, 80) and c.image.shape == (2, 60, 80)
    np.testing.assert_array_equal(c.image, s.image[:, 10:70, :80])
    whole = crop_sample(s, slice(None), slice(None))
    _same_targets(whole, s)
    t, ct = s.targets, c.targets
    for f in ("foreground", "boundary", "valid", "weight", "instances", "boundary_weight"):
        np.testing.assert_array_equal(getattr(ct, f), getattr(t, f)[10:70, :80], err_msg=f)
    assert (ct.boundary_valid, ct.boundary_width, ct.contact_gap) == (
        t.boundary_valid,
        t.boundary_width,
        t.contact_gap,
    )
    np.testing.assert_array_equal(c.fg_index, np.flatnonzero(ct.foreground))
    assert (
        c.name == f"{s.name} [10:70, 0:80]" and crop_sample(s, slice(5), slice(5), "x").name == "x"
    )
    assert s.shape == (120, 100)  # the sample itself is left alone
    with pytest.raises(NapariUnetError, match="empty"):
        crop_sample(s, slice(50, 50), slice(None))
    with pytest.raises(NapariUnetError, match="every pixel"):
        crop_sample(s, slice(None, None, 2), slice(None))


def test_crop_sample_keeps_the_foreground_positions_within_the_samples_cap():
    img, lab = nuclei_image(shape=(120, 100), n=20, seed=3)
    (s,) = _samples([img], [lab], max_fg_index=50)
    assert s.fg_index.size == 50 < np.count_nonzero(s.targets.foreground)
    c = crop_sample(s, slice(0, 80), slice(None))
    assert c.fg_index.size == 50  # a random subset of the crop's, as many as the sample's
    assert np.all(np.diff(c.fg_index) > 0) and c.targets.foreground.flat[c.fg_index].all()
    np.testing.assert_array_equal(crop_sample(s, slice(0, 80), slice(None)).fg_index, c.fg_index)
    # a partly annotated sample: the annotated positions are cut too
    sparse_lab = np.where(lab > 0, lab + 1, 1)
    sparse_lab[60:] = 0  # the bottom half is not annotated
    (p,) = _samples([img], [sparse_lab], sparse=True)
    if getattr(p, "valid_index", None) is not None:
        top = crop_sample(p, slice(0, 60), slice(None))
        assert top.valid_index is None  # all annotated
        mid = crop_sample(p, slice(40, 80), slice(None))
        np.testing.assert_array_equal(mid.valid_index, np.flatnonzero(mid.targets.valid))


def test_two_images_each_hold_back_a_strip_and_train_on_the_rest():
    images, labels = _pairs(2)
    samples = _samples(images, labels)
    train, val, text = split_validation(samples, 0.1, 0, min_size=32)
    assert text == "held back the bottom 20% of each of 2 images for validation"
    assert [s.shape for s in train] == [(256, 128)] * 2 and [s.shape for s in val] == [
        (64, 128)
    ] * 2
    for s, t, v in zip(samples, train, val, strict=True):
        # no overlap, nothing lost: the training part and the strip make up the image
        assert t.shape[0] + v.shape[0] == s.shape[0]
        np.testing.assert_array_equal(np.concatenate([t.image, v.image], axis=1), s.image)
        for f in ("foreground", "valid", "instances"):
            parts = [getattr(t.targets, f), getattr(v.targets, f)]
            np.testing.assert_array_equal(np.concatenate(parts), getattr(s.targets, f))
        assert v.targets.valid.all() and v.targets.foreground.any()
        # patches are centred on the training part's own objects
        assert t.fg_index.max() < t.shape[0] * t.shape[1]
    # wide images hold back their right-hand columns; the fraction asked for is kept
    wide = _samples(*_pairs(2, shape=(128, 400)))
    train, val, text = split_validation(wide, 0.3, 0, min_size=32)
    assert [s.shape for s in val] == [(128, 120)] * 2 and [s.shape for s in train] == [
        (128, 280)
    ] * 2
    assert text == "held back the right 30% of each of 2 images for validation"
    # a 256-pixel image gives a 64-pixel strip (a quarter: 20% would be too narrow to score)
    train, val, text = split_validation(_samples(*_pairs(1, shape=(256, 256))), 0.1, 0, 128)
    assert [s.shape for s in val] == [(64, 256)] and [s.shape for s in train] == [(192, 256)]
    assert text == "held back the bottom 25% of the image for validation"


def test_many_images_hold_back_whole_images_and_stacks_stay_together():
    images, labels = _pairs(6, shape=(64, 64), objects=4)
    samples = _samples(images, labels, names=list("abcdef"))
    train, val, text = split_validation(samples, 0.1, 0, min_size=32)
    assert len(val) == 1 and len(train) == 5 and text == "held back 1 of 6 images for validation"
    assert {s.name for s in train + val} == set("abcdef")
    assert all(s.shape == (64, 64) for s in train + val)  # whole images
    # a stack's planes ("d (0,)", "d (1,)") are one image, held back or trained on together
    stack_images = images[:3] + [np.stack(images[3:6])]
    stack_labels = labels[:3] + [np.stack(labels[3:6])]
    for seed in range(6):
        samples = _samples(stack_images, stack_labels, names=list("abcd"))
        train, val, text = split_validation(samples, 0.1, seed)
        assert text == "held back 1 of 4 images for validation"
        held = {s.name.split(" (")[0] for s in val}
        assert len(held) == 1 and not held & {s.name.split(" (")[0] for s in train}
        assert len(val) == (3 if held == {"d"} else 1)


def test_a_stack_holds_back_the_same_strip_of_every_plane():
    images, labels = _pairs(3)
    samples = _samples([np.stack(images)], [np.stack(labels)], names=["stack"])
    assert [s.name for s in samples] == ["stack (0,)", "stack (1,)", "stack (2,)"]
    train, val, text = split_validation(samples, 0.1, 0, min_size=32)
    assert text == "held back the bottom 20% of each of 3 images for validation"
    assert [s.shape for s in val] == [(64, 128)] * 3 and [s.shape for s in train] == [
        (256, 128)
    ] * 3


def test_small_images_hold_back_nothing_and_say_so():
    images, labels = _pairs(2, shape=(96, 96), objects=12)
    samples = _samples(images, labels)
    train, val, text = split_validation(samples, 0.1, 0, min_size=64)
    assert train == samples and val == []
    assert text.startswith("nothing held back: every annotated pixel trains (2 images")
    assert "256 px" in text
    # the training part keeps at least one training patch
    big = _samples(*_pairs(2))
    assert split_validation(big, 0.1, 0, min_size=64)[1]
    train, val, text = split_validation(big, 0.1, 0, min_size=300)
    assert not val and "375 px" in text
    # no validation asked for
    train, val, text = split_validation(big, 0.0, 0, min_size=32)
    assert train == big and val == [] and text.startswith("nothing held back")


def test_a_strip_without_annotation_is_not_held_back():
    images, labels = _pairs(2)
    sparse = [np.where(lab > 0, lab + 1, 1) for lab in labels]  # 1 = painted background
    sparse[0][200:] = 0  # the bottom of the first image is not annotated
    samples = _samples(images, sparse, sparse=True)
    train, val, text = split_validation(samples, 0.1, 0, min_size=32)
    assert [s.shape for s in train] == [(320, 128), (256, 128)] and [s.shape for s in val] == [
        (64, 128)
    ]
    assert train[0] is samples[0]  # trains whole
    assert text == (
        "held back the bottom 20% of 1 of 2 images for validation (the other trains whole: "
        "too small, or no annotated object in the strip or the rest)"
    )
    # painted background but no object in the strip: no strip either
    sparse[0][200:] = 1
    sparse[1][256:] = 1
    train, val, text = split_validation(_samples(images, sparse, sparse=True), 0.1, 0, 32)
    assert not val and "none with an annotated object both in a strip" in text


def test_training_on_two_images_learns_from_both_and_says_what_was_held_back(monkeypatch):
    import napari_unet.core.batches as batches_mod

    drawn_from = []

    class Recording(PatchSampler):
        def __init__(self, samples, *args, **kwargs):
            drawn_from.extend(s.shape for s in samples)
            super().__init__(samples, *args, **kwargs)

    monkeypatch.setattr(batches_mod, "PatchSampler", Recording)
    images, labels = _pairs(2)
    cfg = TrainConfig(**dict(TINY, depth=4))  # a 64-pixel strip through a depth-4 UNet
    gen = iter_train(images, labels, cfg)
    reports = []
    while True:
        try:
            reports.append(next(gen))
        except StopIteration as e:
            result = e.value
            break
    start = reports[0]
    assert start.kind == "start"
    assert start.message.startswith(
        "training on 2 image(s); held back the bottom 20% of each of 2 images for validation; "
        "2 steps per epoch"
    )
    # the patches come from the top 80% of both images, never from a strip
    assert drawn_from == [(256, 128), (256, 128)]
    meta = result.bundle.meta
    assert meta["n_train_images"] == 2 and meta["n_val_images"] == 2
    assert meta["validation"] == "held back the bottom 20% of each of 2 images for validation"
    # both strips are scored, object by object (they are fully annotated), and the
    # prediction settings are fitted on both
    assert result.history and all(h["score"] == h["f1"] for h in result.history)
    assert meta["postprocess"]["n_images"] == 2


def test_training_on_small_images_trains_on_every_pixel():
    images, labels = _pairs(2, shape=(96, 96), objects=12)
    gen = iter_train(images, labels, TrainConfig(**TINY))
    start = next(gen)
    assert start.message.startswith("training on 2 image(s); nothing held back")
    gen.close()


def test_a_training_part_smaller_than_the_patch_across_still_gives_patches():
    # a wide strip of a short image: the sampler pads what the patch does not cover
    images, labels = _pairs(1, shape=(40, 400), objects=10)
    train, val, _ = split_validation(_samples(images, labels), 0.2, 0, min_size=64)
    assert [s.shape for s in train] == [(40, 320)] and [s.shape for s in val] == [(40, 80)]
    x, y, w = PatchSampler(train, 64, 2, 2, seed=0).batch()
    assert x.shape == (2, 1, 64, 64) and y.shape == w.shape == (2, 2, 64, 64)
