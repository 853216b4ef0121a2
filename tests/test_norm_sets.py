"""Normalisation statistics per kind of image for the retrains of a built-in model."""

import copy

import numpy as np
import pytest
import torch
from _builtin_helpers import install_builtin
from _synthetic import nuclei_image

from napari_unet.core import norm_sets
from napari_unet.core.data import Normalisation
from napari_unet.core.norm_sets import NOTE, base_statistics, choose, first_norm_pair
from napari_unet.core.predict import PredictConfig, predict, prepare_image
from napari_unet.core.train import TrainConfig, train


@pytest.fixture(scope="module")
def tiny_model():
    pairs = [nuclei_image((96, 96), n=10, seed=s) for s in range(4)]
    cfg = TrainConfig(
        depth=2,
        base_channels=8,
        patch_size=64,
        batch_size=4,
        device="cpu",
        epochs=1,
        steps_per_epoch=6,
        val_fraction=0,
        tune_postprocessing=False,
    )
    return train([p[0] for p in pairs], [p[1] for p in pairs], cfg).bundle


@pytest.fixture
def builtin(tiny_model, tmp_path, monkeypatch):
    """`tiny_model` installed as the built-in model 'tiny', loaded as the user gets it."""
    return install_builtin(tiny_model, tmp_path, monkeypatch)[1]


def _first_moments(bundle, image):
    """Channel means and variances of the first normalisation layer's input on `image`."""
    norm = Normalisation.from_dict(bundle.meta["normalisation"])
    img = prepare_image(image, bundle.in_channels, None)
    lo, hi = norm.ranges(img)
    conv, _, _ = first_norm_pair(bundle.model)
    with torch.no_grad():
        a = conv(torch.as_tensor(norm.apply(img, lo, hi))[None])
    return a.mean(dim=(0, 2, 3)), a.var(dim=(0, 2, 3)), (img, lo, hi, norm)


def _retrained(builtin, image):
    """A stand-in for a retrain of the built-in model, still tied to it: every weight and
    every running statistic moved, the first statistics to fit `image` (as a retrain on
    images like it would)."""
    retrained = copy.deepcopy(builtin)
    with torch.no_grad():
        for key, value in retrained.model.state_dict().items():
            if key.endswith("running_var"):
                value.mul_(1.3)
            elif value.is_floating_point():
                value.mul_(1.05)
    mu, var, _ = _first_moments(retrained, image)
    _, bn, _ = first_norm_pair(retrained.model)
    with torch.no_grad():
        bn.running_mean.copy_(mu)
        bn.running_var.copy_(var)
    return retrained


def _pulled_back(retrained, builtin) -> dict:
    """What a retrain predicts an image like the built-in model's data with: the built-in
    running statistics, and the weights pulled back towards the built-in ones, keeping
    :data:`norm_sets.PULL` of the retrain's change (counters as they are)."""
    pull = norm_sets.PULL
    ref = builtin.model.state_dict()
    expected = {}
    for key, value in retrained.model.state_dict().items():
        if key.endswith(("running_mean", "running_var")):
            expected[key] = ref[key]
        elif value.is_floating_point():
            expected[key] = ref[key] + pull * (value - ref[key])
        else:
            expected[key] = value
    return expected


@pytest.mark.parametrize("pull", [None, 0.25, 1.0])
def test_each_image_gets_the_statistics_that_describe_it(builtin, pull, monkeypatch):
    if pull is not None:  # the default, another share, and the statistics alone
        monkeypatch.setattr(norm_sets, "PULL", pull)
    own_kind, _ = nuclei_image((96, 96), n=10, seed=21)
    other_kind = (255 - own_kind.astype(np.int32)).astype(own_kind.dtype)  # inverted
    retrained = _retrained(builtin, own_kind)
    assert base_statistics(builtin) is None  # the built-in model itself: one set
    stats = base_statistics(retrained)
    assert stats is not None

    # an image like the retrain's: its own statistics, the same object
    _, _, args = _first_moments(retrained, own_kind)
    assert choose(retrained, *args) == (retrained, None)

    # moved far from every image: the built-in model's statistics win, and the weights are
    # pulled back towards the built-in ones
    assert pull is not None or norm_sets.PULL == 0.5
    far = copy.deepcopy(retrained)
    _, bn, name = first_norm_pair(far.model)
    with torch.no_grad():
        bn.running_mean.fill_(1e3)
    _, _, args = _first_moments(far, other_kind)
    before = copy.deepcopy(far.model.state_dict())
    chosen, note = choose(far, *args)
    assert note.startswith(NOTE) and chosen is not far and chosen.meta is far.meta
    assert ("half of what the retrain changed" in note) == (pull is None)
    assert ("25% of what the retrain changed" in note) == (pull == 0.25)
    assert ("retrain changed" in note) == (pull != 1.0)
    state, expected = chosen.model.state_dict(), _pulled_back(far, builtin)
    for key, value in far.model.state_dict().items():
        torch.testing.assert_close(state[key], expected[key])
        if value.is_floating_point() and (key.endswith("running_var") or pull != 1.0):
            assert not torch.equal(state[key], value), key  # differs from the user's
    assert float(bn.running_mean[0]) == 1e3  # the user's model is not changed
    for key, value in far.model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_prediction_uses_the_chosen_statistics_and_says_so(builtin):
    image, _ = nuclei_image((96, 96), n=10, seed=22)
    far = _retrained(builtin, image)
    _, bn, _ = first_norm_pair(far.model)
    with torch.no_grad():
        bn.running_mean.fill_(1e3)
    cfg = PredictConfig(device="cpu")
    result = predict(far, image, config=cfg)
    assert any(n.startswith(NOTE) for n in result.notes)
    # the weights pulled back, the built-in statistics, and no tie (nothing to choose)
    manual = copy.deepcopy(far)
    manual.meta = {k: v for k, v in far.meta.items() if k != "retrain_base"}
    manual.model.load_state_dict(_pulled_back(far, builtin))
    expected = predict(manual, image, config=cfg)
    assert not any(n.startswith(NOTE) for n in expected.notes)
    np.testing.assert_array_equal(result.labels, expected.labels)
    for name in far.outputs:
        np.testing.assert_allclose(
            result.probabilities[name], expected.probabilities[name], atol=1e-6
        )
    # a z-stack is predicted with one choice for all its planes
    stack = np.stack([image, image[::-1], image[:, ::-1]])
    result = predict(far, stack, config=cfg)
    assert any(n.startswith(NOTE) for n in result.notes)
    np.testing.assert_array_equal(result.labels, predict(manual, stack, config=cfg).labels)


def test_models_not_tied_to_an_installed_builtin_predict_as_they_are(
    builtin, tiny_model, monkeypatch, tmp_path
):
    from napari_unet.core.builtin import ENV_VAR

    image, _ = nuclei_image((64, 64), n=5, seed=23)
    retrained = _retrained(builtin, image)
    _, bn, _ = first_norm_pair(retrained.model)
    with torch.no_grad():
        bn.running_mean.fill_(1e3)
    _, _, args = _first_moments(retrained, image)
    assert choose(tiny_model, *args) == (tiny_model, None)  # the user's own model
    empty = tmp_path / "none"
    empty.mkdir()
    assert choose(retrained, *args)[1].startswith(NOTE)  # (its state is cached now)
    monkeypatch.setenv(ENV_VAR, str(empty))  # the built-in model is no longer installed
    assert choose(retrained, *args) == (retrained, None)
