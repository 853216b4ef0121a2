"""What the widgets' workers run: thin generators over the core, Qt-free.

Each job imports the core module it needs *inside* the generator, so torch is imported
in the worker thread the first time and never when napari starts. The jobs get plain
arrays and config dictionaries (read from layers and widgets on the main thread), yield
the core's progress objects and return the core's results; they never see a layer or a
widget.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.core.errors import NapariUnetError


class JobFailed(Exception):
    """An unexpected error in a job (the original is chained as ``__cause__``).

    Qt workers (superqt) drop a ``RuntimeError`` raised by a generator as if the worker
    had been deleted, so the jobs re-raise those as this (or as a
    :class:`NapariUnetError` when the device ran out of memory).
    """


def _out_of_memory(error: BaseException) -> bool:
    return type(error).__name__ == "OutOfMemoryError" or "out of memory" in str(error).lower()


def reraise_runtime_errors(job: Callable[..., Generator]) -> Callable[..., Generator]:
    """Make a job's RuntimeErrors reach the worker's ``errored`` signal."""

    @functools.wraps(job)
    def wrapper(*args: Any, **kwargs: Any) -> Generator:
        try:
            return (yield from job(*args, **kwargs))
        except RuntimeError as error:
            if _out_of_memory(error):
                raise NapariUnetError(
                    "The device ran out of memory. Lower the batch size, the patch size (Train) "
                    "or the tile size (Predict), or choose the CPU as device."
                ) from error
            raise JobFailed(f"{type(error).__name__}: {error}") from error

    return wrapper


@dataclass
class Predicted:
    """What :func:`predict_job` returns.

    Attributes
    ----------
    bundle : ModelBundle
        The model used (loaded from a file when the job was given a path).
    result : PredictResult or None
        None when stopped.
    loaded_from : str or None
        The model file, when the model was loaded by the job.
    """

    bundle: Any
    result: Any
    loaded_from: str | None = None


@dataclass
class Retrained:
    """What :func:`retrain_job` returns: the fine-tuned model and the new prediction."""

    train: Any  # core.train.TrainResult
    predicted: Predicted


def channel_axis_for(shape: Sequence[int], rgb: bool, in_channels: int) -> int | None:
    """Return the channel axis of an image layer's data for a model taking `in_channels`.

    Parameters
    ----------
    shape : tuple of int
        The layer data's shape.
    rgb : bool
        napari's ``layer.rgb``: channels are last.
    in_channels : int
        What the model expects.

    Returns
    -------
    int or None
        -1 for RGB(A) layers; for a multi-channel model and a layer that is not RGB, the
        axis of that size, looked for at the end and then at the start; otherwise None
        (the core then repeats a grey image on every channel, or explains the mismatch).
    """
    if rgb:
        return -1
    if in_channels == 1 or len(shape) < 3:
        return None
    for axis in (len(shape) - 1, 0):
        if shape[axis] == in_channels:
            return axis
    return None


@reraise_runtime_errors
def train_job(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: dict[str, Any],
    *,
    names: Sequence[str] | None = None,
    init: Any = None,
    init_path: str | None = None,
    stop: threading.Event | None = None,
    in_child: bool = True,
) -> Generator[Any, None, Any]:
    """Train with :func:`napari_unet.core.train.iter_train`.

    Yields TrainProgress and returns TrainResult. `init` (a ModelBundle) or `init_path`
    (a checkpoint file) fine-tunes a model. With `in_child` (the default) the training
    runs in a child process (:mod:`._process`), so that neither importing torch, nor
    preparing the data, nor the steps ever hold the viewer's interpreter lock; the
    worker thread running this job only relays progress and the stop event.
    """
    if in_child:
        from napari_unet._widgets._process import run_in_child

        result = yield from run_in_child(
            f"{__name__}:train_generator",
            images,
            labels,
            config,
            names=names,
            init=init,
            init_path=init_path,
            stop=stop,
        )
    else:
        result = yield from train_generator(
            images, labels, config, names=names, init=init, init_path=init_path, stop=stop
        )
    return result


def train_generator(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    config: dict[str, Any],
    *,
    names: Sequence[str] | None = None,
    init: Any = None,
    init_path: str | None = None,
    stop: Any = None,
) -> Generator[Any, None, Any]:
    """Load the model to fine-tune (if any) and run the core trainer; what trains in the child."""
    from napari_unet.core.train import TrainConfig, iter_train

    if init is None and init_path:
        from napari_unet.core.checkpoint import load_checkpoint

        init = load_checkpoint(init_path)
    result = yield from iter_train(
        images, labels, TrainConfig.from_dict(config), names=names, init=init, stop=stop
    )
    return result


@reraise_runtime_errors
def predict_job(
    bundle: Any,
    image: Any,
    *,
    rgb: bool,
    config: dict[str, Any],
    bundle_path: str | None = None,
    stop: threading.Event | None = None,
) -> Generator[Any, None, Predicted]:
    """Predict with :func:`napari_unet.core.predict.iter_predict`.

    Loads the model from `bundle_path` when `bundle` is None. Yields PredictProgress;
    returns :class:`Predicted` (its ``result`` is None when stopped).
    """
    from napari_unet.core.predict import PredictConfig, iter_predict

    loaded_from = None
    if bundle is None:
        from napari_unet.core.checkpoint import load_checkpoint

        bundle = load_checkpoint(bundle_path)
        loaded_from = bundle_path
    axis = channel_axis_for(tuple(image.shape), rgb, bundle.in_channels)
    settings = dict(config)
    if settings.pop("fitted", False):  # the model's own threshold and split depth
        for key in ("threshold", "h", "min_distance"):  # min_distance only serves h = None
            settings.pop(key, None)
        cfg = PredictConfig.for_model(bundle, **settings)
    else:
        cfg = PredictConfig(**settings)
    result = yield from iter_predict(bundle, image, channel_axis=axis, config=cfg, stop=stop)
    return Predicted(bundle, result, loaded_from)


@reraise_runtime_errors
def retrain_job(
    images: Sequence[np.ndarray],
    labels: Sequence[np.ndarray],
    train_config: dict[str, Any],
    bundle: Any,
    image: Any,
    *,
    names: Sequence[str],
    rgb: bool,
    predict_config: dict[str, Any],
    stop: threading.Event | None = None,
) -> Generator[Any, None, Retrained]:
    """Fine-tune `bundle` on the training set, then predict `image` again.

    Yields TrainProgress, then PredictProgress. Stopping during training keeps the best
    model so far and skips the prediction (``predicted.result`` is None).
    """
    trained = yield from train_job(
        images, labels, train_config, names=names, init=bundle, stop=stop
    )
    if stop is not None and stop.is_set():
        return Retrained(trained, Predicted(trained.bundle, None))
    predicted = yield from predict_job(
        trained.bundle, image, rgb=rgb, config=predict_config, stop=stop
    )
    return Retrained(trained, predicted)


@reraise_runtime_errors
def split_job(
    data: np.ndarray, *, from_probability: bool, params: dict[str, Any]
) -> Generator[str, None, np.ndarray]:
    """Split touching nuclei in labels/a mask, or in a foreground probability image.

    Labels or masks go through :func:`napari_unet.core.split.split_nuclei`, probabilities
    through :func:`napari_unet.core.split.labels_from_probabilities` (threshold, then
    split).
    """
    yield "splitting"
    return split_array(data, from_probability=from_probability, params=params)


def split_array(data: np.ndarray, *, from_probability: bool, params: dict[str, Any]) -> np.ndarray:
    """Compute what :func:`split_job` returns; the live preview uses it too."""
    from napari_unet.core.split import labels_from_probabilities, split_nuclei

    if from_probability:
        return labels_from_probabilities(
            data,
            threshold=params["threshold"],
            min_size=params["min_size"],
            fill_holes=params["fill_holes"],
            split=True,
            min_distance=params["min_distance"],
            h=params["h"],
            smooth=params["smooth"],
        )
    return split_nuclei(
        data,
        min_distance=params["min_distance"],
        h=params["h"],
        smooth=params["smooth"],
        min_size=params["min_size"],
        fill_holes=params["fill_holes"],
    )
