import threading

import numpy as np
import pytest
from _synthetic import touching_discs
from scipy import ndimage as ndi

from napari_unet.core import tune
from napari_unet.core.tune import fit_threads, tune_postprocessing


def _probabilities(labels, seed):
    """Soft foreground and boundary maps of `labels`, blurred and noisy, (2, Y, X)."""
    rng = np.random.default_rng(seed)
    fg = ndi.gaussian_filter((labels > 0).astype(np.float32), 1.5)
    edges = ndi.morphological_gradient(labels, size=3) > 0
    bd = ndi.gaussian_filter((edges & (labels > 0)).astype(np.float32), 1.0)
    noisy = [np.clip(a + rng.normal(0, 0.05, a.shape), 0, 1) for a in (fg, bd)]
    return np.stack(noisy).astype(np.float32)


@pytest.fixture(scope="module")
def fit_set():
    truths = [touching_discs((128, 128), n=10, seed=s) for s in range(3)]
    return [_probabilities(t, s) for s, t in enumerate(truths)], truths


def test_fit_threads_give_the_result_of_one_thread(fit_set, monkeypatch):
    probs, truths = fit_set
    names = set()
    real = tune.score_labels

    def spy(instances, preds):
        names.add(threading.current_thread().name)
        return real(instances, preds)

    monkeypatch.setattr(tune, "score_labels", spy)
    one = tune_postprocessing(probs, truths, ["foreground", "boundary"], workers=1)
    assert names == {threading.current_thread().name}
    names.clear()
    three = tune_postprocessing(probs, truths, ["foreground", "boundary"], workers=3)
    assert all(n.startswith("napari-unet-fit") for n in names) and len(names) > 1
    assert one == three
    assert one["n_images"] == 3 and one["threshold"] in tune.THRESHOLDS
    assert one["h"] in tune.SPLIT_DEPTHS and one["score"] >= one["default"]["score"] - 1e-12


def test_fit_threads_follow_the_usable_cores(monkeypatch):
    monkeypatch.setattr(tune.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    assert fit_threads() == 2
    assert fit_threads(1) == 1
    monkeypatch.setattr(tune.os, "sched_getaffinity", lambda pid: set(range(64)), raising=False)
    assert fit_threads() == tune.MAX_FIT_THREADS


def test_an_error_in_a_fit_thread_reaches_the_caller(fit_set, monkeypatch):
    probs, truths = fit_set

    def broken(instances, preds):
        raise MemoryError("no room for the labels")

    monkeypatch.setattr(tune, "score_labels", broken)
    with pytest.raises(MemoryError, match="no room"):
        tune_postprocessing(probs, truths, ["foreground", "boundary"], workers=2)
