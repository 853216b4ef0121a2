"""The end of training: keep the better weights, fit the prediction settings, within budget.

When training ends, the trainer predicts the held-back images with the weights that
validated best and, when they are not the final ones, with the final weights too; it
keeps whichever scores better on them, then fits the foreground threshold and split
depth to that model's predictions (:func:`napari_unet.core.tune.tune_postprocessing`)
and stores them with it (:func:`fit_prediction_settings`). Under a time budget this
step takes at most :data:`TUNE_SHARE` of it: :class:`FitPlan` chooses the images and
says how much time the trainer keeps free for it, from what each validation costs.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import TYPE_CHECKING

from napari_unet.core.data import Sample
from napari_unet.core.validation import first_pixels, predict_sample

if TYPE_CHECKING:  # torch is imported when training starts, not at import
    from napari_unet.core.checkpoint import ModelBundle

__all__ = [
    "TUNE_SHARE",
    "FIT_PER_PASS",
    "FIT_PARALLEL_SHARE",
    "FitStopped",
    "FitPlan",
    "can_fit",
    "fit_per_pass",
    "plan_fit",
    "predict_held_back",
    "fit_prediction_settings",
    "fitted_text",
    "keep_unfitted",
    "unfitted_text",
]

#: Share of a time budget that the end-of-training fit may take at most.
TUNE_SHARE = 0.12

#: Time of fitting the prediction settings to a set of images on one thread (scoring 21
#: pairs of threshold and split depth, and the default settings for the choice of
#: weights), in units of the time it takes to predict them once. Measured by
#: bench/fit_cost.py on DSB 2018 with a 2-core CPU: 2.8 on the 60 validation images, 3.9
#: on the 11 of the subset; the deadline given to :func:`fit_prediction_settings`
#: catches what this misjudges.
FIT_PER_PASS = 3.0
#: Share of that time which the fit's threads divide between them
#: (:func:`napari_unet.core.tune.fit_threads`): bench/fit_cost.py measured two threads
#: fitting 1.6 times as fast as one, which is this share by Amdahl's law.
FIT_PARALLEL_SHARE = 0.75


class FitStopped(Exception):
    """The user stopped training while the prediction settings were being fitted."""


def fit_per_pass(threads: int | None = None) -> float:
    """:data:`FIT_PER_PASS` for a fit on `threads` threads (the fit's own if None)."""
    if threads is None:
        from napari_unet.core.tune import fit_threads

        threads = fit_threads()
    share = FIT_PARALLEL_SHARE
    return FIT_PER_PASS * (1.0 - share + share / max(1, int(threads)))


def can_fit(images: Sequence[Sample]) -> bool:
    """Whether the settings can be fitted on these held-back images.

    They must be fully annotated instance labels: a binary mask does not say where
    touching objects meet, so it cannot score the splitting.
    """
    return bool(images) and all(
        v.targets.instances is not None and v.targets.valid.all() and v.targets.boundary_valid
        for v in images
    )


def plan_fit(
    val: list[Sample], val_px: int, tune_all: list[Sample], predict_seconds: float, budget_s
) -> tuple[list[Sample], float]:
    """Choose the images of the end-of-training fit and its cost.

    `predict_seconds` is the time the last validation spent predicting the subset `val`
    (`val_px` pixels); the cost returned is in those units. All held-back images
    (`tune_all`) are taken unless, at that cost per pixel, predicting them twice
    (best-validated and final weights) and fitting would take more than
    :data:`TUNE_SHARE` of a time budget: then as many as fit, or the validation subset
    (predicted once).
    """
    per_px = predict_seconds / max(val_px, 1)
    fit = fit_per_pass()
    cost = 2.0 + fit  # in predictions of the fit's images
    allowed = float("inf")
    if budget_s and per_px > 0:
        allowed = TUNE_SHARE * budget_s / (cost * per_px)
    kept = first_pixels(tune_all, len(tune_all), int(min(allowed, 2**62)))
    kept_px = sum(v.shape[0] * v.shape[1] for v in kept)
    if kept_px <= val_px:  # no more than the subset: predict once, no choice of weights
        return val, 1.0 + fit
    return kept, cost * kept_px / max(val_px, 1)


class FitPlan:
    """The images of the end-of-training fit, and the time the trainer keeps free for it.

    The end of the run predicts the fit's images (twice when they are more than the
    validation subset: best-validated and final weights) and fits the settings
    (:func:`fit_per_pass` times as long as predicting them once). :attr:`cost` is that
    time in predictions of the validation subset; the trainer keeps it free in the
    budget, with one more validation. Both are updated after each validation
    (:meth:`update`), when its cost is known.

    Parameters
    ----------
    enabled : bool
        Whether the fit runs at the end (else :attr:`cost` is 0).
    val : list of Sample
        The validation subset, scored at each validation.
    tune_all : list of Sample
        All held-back images the fit may use (up to
        :data:`napari_unet.core.tune.TUNE_MAX_PIXELS`).
    budget_s : float or None
        The training's time budget in seconds.
    """

    def __init__(
        self, enabled: bool, val: list[Sample], tune_all: list[Sample], budget_s: float | None
    ) -> None:
        self.enabled = enabled
        self.val = val
        self.val_px = sum(v.shape[0] * v.shape[1] for v in val)
        self.tune_all = tune_all
        self.budget_s = budget_s
        #: The images the fit will use.
        self.images = val
        #: Its time, in predictions of the validation subset.
        self.cost = 1.0 + fit_per_pass() if enabled else 0.0

    def update(self, predict_seconds: float) -> None:
        """Plan again, now that predicting the subset took `predict_seconds`."""
        if self.enabled:
            self.images, self.cost = plan_fit(
                self.val, self.val_px, self.tune_all, predict_seconds, self.budget_s
            )

    def message(self, choose_weights: bool) -> str:
        """Say what the fit is about to do, on how many images (a progress message)."""
        return (
            ("choosing the final weights and fitting" if choose_weights else "fitting")
            + f" the prediction settings on {'up to ' if self.budget_s else ''}"
            f"{len(self.images)} held-back image(s)"
        )

    @property
    def is_subset(self) -> bool:
        """Whether the fit uses the validation subset itself (no choice of weights then)."""
        return self.images is self.val


def predict_held_back(
    bundle: ModelBundle,
    val: Sequence[Sample],
    device,
    stop,
    deadline=None,
    after: float = 0.0,
    precision: str = "auto",
) -> list:
    """Predict the images of `val` in order.

    With `deadline` (a :func:`time.perf_counter` value), an image is added only while,
    at the mean time per image so far, predicting it and then `after` times as long
    again for every image taken (the work that follows) ends before the deadline; the
    first image is always taken. Returns the probabilities of the images taken.

    Raises
    ------
    FitStopped
        When `stop` is set.
    """
    from napari_unet.core.predict import PredictConfig

    cfg = PredictConfig(tile_size=512, overlap=32, batch_size=2, precision=precision)
    bundle.model.eval()
    probs = []
    t_start = time.perf_counter()
    for s in val:
        if stop is not None and stop.is_set():
            raise FitStopped
        if deadline is not None and probs:
            now = time.perf_counter()
            per_image = (now - t_start) / len(probs)
            if now + per_image * (1 + after * (len(probs) + 1)) > deadline:
                break
        prob, cfg = predict_sample(bundle, s, cfg, device)
        probs.append(prob)
    return probs


def fit_prediction_settings(
    bundle: ModelBundle,
    val: Sequence[Sample],
    device,
    last_state=None,
    stop=None,
    deadline=None,
    precision: str = "auto",
) -> dict:
    """Fit the prediction settings on the held-back images.

    The model holds the weights that scored best at validation. With `last_state`
    (the final weights, when they are not those), both are scored on all `val` images
    at the default settings and the better one is kept in the model; the settings are
    then fitted to it. With `deadline` (a :func:`time.perf_counter` value), the fit
    uses as many of the `val` images, in order, as it can finish by then (at least one;
    see :func:`fit_per_pass`).

    Returns
    -------
    dict
        What :func:`napari_unet.core.tune.tune_postprocessing` returns, with
        ``weights`` (which weights were kept, and both scores) when there was a choice.

    Raises
    ------
    FitStopped
        When `stop` is set (the model then holds the best weights).
    """
    from napari_unet.core.predict import PredictConfig, labels_from_output
    from napari_unet.core.tune import score_labels, tune_postprocessing

    after = fit_per_pass() + (1.0 if last_state is not None else 0.0)
    probs = predict_held_back(bundle, val, device, stop, deadline, after, precision)
    val = list(val[: len(probs)])
    instances = [s.targets.instances for s in val]
    chosen = None
    if last_state is not None:
        base = PredictConfig()
        best_state = {
            k: v.detach().to("cpu", copy=True) for k, v in bundle.model.state_dict().items()
        }
        bundle.model.load_state_dict(last_state)
        try:
            probs_last = predict_held_back(bundle, val, device, stop, precision=precision)
        except FitStopped:
            bundle.model.load_state_dict(best_state)
            raise
        s_best, s_last = (
            score_labels(instances, [labels_from_output(p, bundle.outputs, base) for p in pr])
            for pr in (probs, probs_last)
        )
        keep_last = s_last["score"] > s_best["score"]
        if keep_last:
            probs = probs_last
        else:
            bundle.model.load_state_dict(best_state)
        chosen = {
            "weights": "last" if keep_last else "best",
            "best_score": s_best["score"],
            "last_score": s_last["score"],
        }
    if stop is not None and stop.is_set():
        raise FitStopped
    tuned = tune_postprocessing(probs, instances, bundle.outputs)
    if chosen is not None:
        tuned["weights"] = chosen
    return tuned


def fitted_text(tuned: dict) -> str:
    """Say which weights were kept and which settings were fitted (the end of a message)."""
    kept = tuned.get("weights", {}).get("weights") == "last"
    return (
        (
            "; the final weights scored better than the best validated ones and were kept"
            if kept
            else ""
        )
        + f"; prediction settings fitted on {tuned['n_images']} held-back image(s): "
        f"threshold {tuned['threshold']:g}, split depth {tuned['h']:g} px "
        f"(F1 {tuned['f1']:.3f}, DSB score {tuned['dsb_score']:.3f})"
    )


def keep_unfitted(meta: dict, start_postprocess: dict | None, tune: bool, stopped: str) -> str:
    """For a model not fitted at the end: keep the starting model's settings, if any.

    They go back into `meta` (marked as the starting model's), and the text returned
    says which settings prediction will use (:func:`unfitted_text`).
    """
    text = unfitted_text(start_postprocess, tune, stopped)
    if isinstance(start_postprocess, dict):
        meta["postprocess"] = {**start_postprocess, "source": "starting model"}
    return text


def unfitted_text(start_postprocess: dict | None, tune: bool, stopped: str) -> str:
    """Say which prediction settings a model that was not fitted at the end will use."""
    from napari_unet.core.predict import PredictConfig, tuned_settings

    if stopped == "user" and tune:
        why = "stopped before the prediction settings were fitted"
    elif stopped == "diverged":
        why = "training diverged"
    else:
        why = "no fully annotated held-back image to fit the prediction settings on"
    if isinstance(start_postprocess, dict) and tuned_settings({"postprocess": start_postprocess}):
        kept = tuned_settings({"postprocess": start_postprocess})
        return (
            f"; {why}: the starting model's settings are kept (threshold "
            f"{kept.get('threshold', PredictConfig.threshold):g}, split depth "
            f"{kept.get('h', PredictConfig.h):g} px)"
        )
    return (
        f"; {why}: prediction uses the default threshold {PredictConfig.threshold:g} and "
        f"split depth {PredictConfig.h:g} px"
    )
