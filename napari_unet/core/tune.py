"""Fit the post-processing (foreground threshold, split depth) to a model's validation images.

How sure a model is of its foreground depends on how long it trained and on the data:
after a short training the probabilities are soft and a threshold of 0.6 finds the
nuclei's edges, after a long one 0.7 or 0.8 does. So at the end of training the
trainer predicts its validation images once with the best model and tries every
threshold in :data:`THRESHOLDS` with every split depth in :data:`SPLIT_DEPTHS`. The
pair with the best mean of F1 (IoU 0.5, pooled over images) and DSB score (mean over
IoU 0.5 to 0.95) is stored in the model file (``meta.postprocess``), and
:meth:`napari_unet.core.predict.PredictConfig.for_model` uses it as the model's
default. Only models validated on fully annotated instance labels are tuned.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import numpy as np

# read where prediction uses it (PredictConfig.for_model); named here too, beside the fit
from napari_unet.core.predict import tuned_settings

__all__ = [
    "THRESHOLDS",
    "SPLIT_DEPTHS",
    "TUNE_MAX_PIXELS",
    "MAX_FIT_THREADS",
    "fit_threads",
    "score_labels",
    "tune_postprocessing",
    "tuned_settings",
    "describe_settings",
]

#: Foreground probability thresholds tried.
THRESHOLDS = (0.5, 0.6, 0.7, 0.8)
#: Split depths h (pixels) tried: two nuclei are cut where the waist between them is
#: at least h pixels narrower than they are.
SPLIT_DEPTHS = (0.5, 1.0, 1.5, 2.0, 3.0)
#: The fit uses the held-back images in order until they hold this many pixels (DSB
#: 2018's 60 validation images hold 10 million; fitting on them takes about 40 s on a
#: 2-core CPU, 64 s on one thread).
TUNE_MAX_PIXELS = 16_000_000
#: Most threads the fit scores settings on at once. The splitting and scoring run in
#: NumPy, SciPy and scikit-image code that releases the GIL, so threads share the
#: work; each holds the labels of all the fit's images, hence a cap.
MAX_FIT_THREADS = 4


def fit_threads(n_tasks: int = len(THRESHOLDS) * len(SPLIT_DEPTHS) + 1) -> int:
    """Threads the fit uses: one per usable CPU core, at most MAX_FIT_THREADS."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, min(cores or 1, MAX_FIT_THREADS, n_tasks))


def score_labels(instances: Sequence[np.ndarray], preds: Sequence[np.ndarray]) -> dict:
    """F1 and DSB score as the benchmarks compute them, and their mean."""
    from napari_unet.core.metrics import evaluate

    r = evaluate(instances, preds)
    return {"f1": r["f1"], "dsb_score": r["dsb_score"], "score": 0.5 * (r["f1"] + r["dsb_score"])}


def tune_postprocessing(
    probabilities: Sequence[np.ndarray],
    instances: Sequence[np.ndarray],
    outputs: Sequence[str],
    base=None,
    workers: int | None = None,
) -> dict:
    """Return the threshold and split depth that score best on these images.

    Parameters
    ----------
    probabilities : sequence of (K, M, N) ndarray
        The model's outputs on the validation images.
    instances : sequence of (M, N) ndarray of int
        Their true instance labels.
    outputs : sequence of str
        The model's output names (``"foreground"`` first).
    base : PredictConfig, optional
        Settings kept as they are (minimum size, hole filling); the defaults if None.
    workers : int, optional
        Threads that score the settings side by side; :func:`fit_threads` if None.
        The result does not depend on it.

    Returns
    -------
    dict
        ``threshold``, ``h`` (the winners), their ``f1``, ``dsb_score`` and ``score``,
        the ``default`` settings' scores for comparison, and ``n_images``.
    """
    from concurrent.futures import ThreadPoolExecutor
    from dataclasses import replace

    from napari_unet.core.predict import PredictConfig, labels_from_output

    base = base or PredictConfig()
    settings = [
        replace(base, threshold=t, h=h, split=True, split_method="distance")
        for t in THRESHOLDS
        for h in SPLIT_DEPTHS
    ]

    def scored(cfg: PredictConfig) -> dict:
        return score_labels(
            instances, [labels_from_output(p, list(outputs), cfg) for p in probabilities]
        )

    n = fit_threads(len(settings) + 1) if workers is None else max(1, int(workers))
    if n == 1:
        results = [scored(cfg) for cfg in [base, *settings]]
    else:
        with ThreadPoolExecutor(max_workers=n, thread_name_prefix="napari-unet-fit") as pool:
            results = list(pool.map(scored, [base, *settings]))
    default, results = results[0], results[1:]
    best = None
    for cfg, r in zip(settings, results, strict=True):  # in order: ties go to the first
        if best is None or r["score"] > best["score"] + 1e-12:
            best = {"threshold": cfg.threshold, "h": cfg.h, **r}
    assert best is not None
    best["default"] = {"threshold": base.threshold, "h": base.h, **default}
    best["n_images"] = len(instances)
    return best


def describe_settings(meta: dict) -> str:
    """Say which threshold and split depth prediction will use with a model, and why.

    Parameters
    ----------
    meta : dict
        The model's metadata (``ModelBundle.meta``).

    Returns
    -------
    str
        E.g. "threshold 0.6, split depth 1.5 px (fitted on 3 held-back images)".
    """
    from napari_unet.core.predict import PredictConfig, settings_text

    tuned = tuned_settings(meta)
    text = settings_text({**PredictConfig().to_dict(), **tuned})
    info = meta.get("postprocess") if isinstance(meta.get("postprocess"), dict) else {}
    if not tuned:
        return f"{text} (the defaults: no fitted settings in the model)"
    if info.get("source") == "starting model":
        return f"{text} (the starting model's, not refitted)"
    n = info.get("n_images")
    return f"{text} (fitted on {n} held-back image(s))" if n else f"{text} (fitted)"
