"""What the widgets' workers run: thin generators over the core, Qt-free.

Each job imports the core module it needs *inside* the generator, so torch is never
imported when napari starts. The jobs get plain arrays and config dictionaries (read
from layers and widgets on the main thread), yield the core's progress objects and
return the core's results; they never see a layer or a widget.

Training, prediction and retraining run their ``*_generator`` in a child process
(:mod:`._process`): the worker thread only relays progress, the stop event and the
result, so the viewer's interpreter never imports torch for them nor runs their Python.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Callable, Generator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from napari_unet.core.errors import NapariUnetError, is_out_of_memory


class JobFailed(Exception):
    """An unexpected error in a job (the original is chained as ``__cause__``).

    Qt workers (superqt) drop a ``RuntimeError`` raised by a generator as if the worker
    had been deleted, so the jobs re-raise those as this (or as a
    :class:`NapariUnetError` when the device ran out of memory).
    """


def reraise_runtime_errors(job: Callable[..., Generator]) -> Callable[..., Generator]:
    """Make a job's RuntimeErrors reach the worker's ``errored`` signal."""

    @functools.wraps(job)
    def wrapper(*args: Any, **kwargs: Any) -> Generator:
        try:
            return (yield from job(*args, **kwargs))
        except RuntimeError as error:
            if is_out_of_memory(error):
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
    measured: Measured | None = None


#: Largest image (in values) whose intensities are measured with a prediction; beyond
#: it (a huge dask image) the table has size and shape columns only.
MAX_MEASURED_VALUES = 2**28
#: Most objects measured with a prediction (about 1 ms each on a 2-core CPU, so at
#: most about 5 s more); more are measured on export only.
MAX_MEASURED_OBJECTS = 5_000


@dataclass
class Measured:
    """Labels with their measurements (:func:`measure_result`).

    Attributes
    ----------
    labels : ndarray
    features : dict of str to ndarray or None
        The table of :func:`napari_unet.core.measure.measure_labels` plus an ``index``
        column (napari maps label values to rows by it); None when it could not be
        measured (see `note`).
    note : str
        Why there are no features, or what was left out ("" when nothing was).
    """

    labels: np.ndarray
    features: dict[str, np.ndarray] | None
    note: str = ""


def measure_options(geometry: dict[str, Any] | None, labels_ndim: int) -> dict[str, Any]:
    """``axes``, ``scale`` and ``unit`` for measuring labels of `labels_ndim` dimensions.

    `geometry` is what :func:`._common.layer_geometry` read from the layer, and ``axes``
    when the widget knows them: a 3D result is then a z-stack or a time series as they
    say; without them, a time series when the layer's first axis is labelled ``t`` /
    ``time``, else a z-stack; the pixel size is the layer's scale in its unit, and there are no
    calibrated columns when the scale is 1 in "pixel" units.

    Examples
    --------
    >>> measure_options({"axis_labels": ["t", "y", "x"], "scale": (1, .5, .5),
    ...                  "unit": "micrometer"}, 3)
    {'axes': 'TYX', 'scale': (0.5, 0.5), 'unit': 'micrometer'}
    """
    from napari_unet.core.io import stack_axes
    from napari_unet.core.measure import default_axes

    geometry = geometry or {}
    axes = geometry.get("axes")  # what the widget was told (its "First axis" choice)
    if axes is None or len(axes) != labels_ndim:
        axes = stack_axes(geometry.get("axis_labels"), labels_ndim)
    if axes is None:
        try:
            axes = default_axes(labels_ndim)
        except NapariUnetError:  # measure_labels says what is wrong
            axes = None
    n_spatial = len((axes or "YX").lstrip("T"))
    scale = tuple(geometry.get("scale") or ())[-n_spatial:]
    unit = str(geometry.get("unit") or "pixel")
    calibrated = len(scale) == n_spatial and unit != "pixel"
    return {
        "axes": axes,
        "scale": scale if calibrated else None,
        "unit": unit if calibrated else None,
    }


def measure_result(
    labels: np.ndarray,
    image: Any = None,
    *,
    channel_axis: int | None = None,
    measure: dict[str, Any] | None = None,
) -> Measured:
    """Measure `labels` (with `image` for intensities) for a result layer's features.

    `measure` is the layer's geometry (:func:`._common.layer_geometry`), fitted to the
    labels by :func:`measure_options`. A measurement that fails never fails the job:
    the note says why.
    """
    from napari_unet.core.measure import measure_labels

    measure = measure_options(measure, np.ndim(labels))
    note = ""
    if image is not None and int(np.prod(image.shape, dtype=np.int64)) > MAX_MEASURED_VALUES:
        image, note = None, "the image is too large to measure intensities with the prediction"
    if image is not None:
        image = np.asarray(image)
    try:
        table = measure_labels(
            labels,
            image,
            axes=measure.get("axes"),
            channel_axis=channel_axis,
            scale=measure.get("scale"),
            unit=measure.get("unit"),
        )
    except NapariUnetError as error:
        return Measured(labels, None, f"the objects were not measured: {error}")
    return Measured(labels, {"index": table["label"], **table}, note)


@dataclass
class Retrained:
    """What :func:`retrain_job` returns: the fine-tune's result and the new prediction."""

    tuned: Any  # core.finetune.FinetuneResult
    predicted: Predicted


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
    from napari_unet._widgets._process import as_model_bundle
    from napari_unet.core.train import TrainConfig, iter_train

    init = as_model_bundle(init)
    if init is None and init_path:
        from napari_unet.core.checkpoint import load_checkpoint

        init = load_checkpoint(init_path)
    result = yield from iter_train(
        images, labels, TrainConfig.from_dict(config), names=names, init=init, stop=stop
    )
    return result


#: What :class:`._process.ChildProcessDied` suggests when a prediction's process dies.
PREDICT_ADVICE = "try a smaller tile size or fewer tiles per step (batch size)."


def _not_sent_note(error: NapariUnetError) -> str:
    return f"the image was predicted in napari's own process, which may pause the viewer: {error}"


@reraise_runtime_errors
def predict_job(
    bundle: Any,
    image: Any,
    *,
    rgb: bool,
    config: dict[str, Any],
    bundle_path: str | None = None,
    stop: threading.Event | None = None,
    measure: dict[str, Any] | None = None,
    in_child: bool = True,
    **predict_kwargs: Any,
) -> Generator[Any, None, Predicted]:
    """Predict with :func:`napari_unet.core.predict.iter_predict`.

    Loads the model from `bundle_path` when `bundle` is None. Yields PredictProgress;
    returns :class:`Predicted` (its ``result`` is None when stopped), with the objects
    measured (:func:`measure_result`) when `measure` is given. `predict_kwargs` go to
    ``iter_predict`` unchanged.

    With `in_child` (the default) all of it (loading the model, the prediction, the
    measurements) runs in a child process (:mod:`._process`, :func:`predict_generator`):
    the labels and probabilities come back in pieces into arrays allocated here, and a
    model loaded from `bundle_path` comes back as a :class:`._process.LazyBundle`, so
    this process never imports torch for it. An image that cannot be sent to another
    process (an array type neither pickle nor cloudpickle can pickle) is predicted here,
    as the result's notes say.
    """
    options = {
        "rgb": rgb,
        "config": config,
        "bundle_path": bundle_path,
        "measure": measure,
        **predict_kwargs,
    }
    note = None
    if in_child:
        from napari_unet._widgets._process import NotSendable, run_in_child

        try:
            predicted = yield from run_in_child(
                f"{__name__}:predict_generator",
                bundle,
                image,
                stop=stop,
                advice=PREDICT_ADVICE,
                **options,
            )
        except NotSendable as error:
            in_child, note = False, _not_sent_note(error)
    if not in_child:
        predicted = yield from predict_generator(bundle, image, stop=stop, **options)
    if bundle is not None:  # the child sends back only a model it loaded
        predicted.bundle = bundle
    if note is not None and predicted.result is not None:
        predicted.result.notes.append(note)
    return predicted


def predict_generator(
    bundle: Any,
    image: Any,
    *,
    rgb: bool,
    config: dict[str, Any],
    bundle_path: str | None = None,
    measure: dict[str, Any] | None = None,
    stop: Any = None,
    stack: dict[str, Any] | None = None,
    **predict_kwargs: Any,
) -> Generator[Any, None, Predicted]:
    """Load the model (if given a path), predict and measure; what predicts in the child.

    `config` is a :class:`~napari_unet.core.predict.PredictConfig` dict; the model's
    fitted threshold and split depth serve where it gives none
    (:meth:`~napari_unet.core.predict.PredictConfig.for_model`, as on the command line).
    The returned :class:`Predicted` holds the model only when it was loaded here (the
    caller has the model it gave). `stack` (``first_axis``, ``axis_labels``, ``scale`` of
    the layer) decides, once the channel axis is known, whether a 3D image is a z-stack
    (labelled in 3D with the layer's voxel size) or a time series
    (:func:`napari_unet.core.volume.guess_axes`), unless ``axes`` is given.
    """
    from napari_unet._widgets._process import as_model_bundle
    from napari_unet.core.data import guess_channel_axis
    from napari_unet.core.predict import PredictConfig, iter_predict

    loaded_from = None
    if bundle is None:
        from napari_unet.core.checkpoint import load_checkpoint

        bundle = load_checkpoint(bundle_path)
        loaded_from = bundle_path
    bundle = as_model_bundle(bundle)
    axis = guess_channel_axis(tuple(image.shape), bundle.in_channels, rgb=rgb)
    if stack is not None and "axes" not in predict_kwargs:
        from napari_unet.core.volume import guess_axes, voxel_size_from_scale

        axes = guess_axes(
            len(image.shape) - (axis is not None),
            stack.get("axis_labels"),
            stack.get("first_axis", "auto"),
        )
        voxel = voxel_size_from_scale(stack.get("scale"), axes)
        predict_kwargs = {**predict_kwargs, "axes": axes, "voxel_size": voxel}
        if measure is not None:
            measure = {**measure, "axes": axes}
    cfg = PredictConfig.for_model(bundle, **config)  # its fitted values, unless given
    result = yield from iter_predict(
        bundle, image, channel_axis=axis, config=cfg, stop=stop, **predict_kwargs
    )
    measured = None
    if result is not None and measure is not None:
        n = int(result.labels.max()) if result.labels.size else 0
        if n > MAX_MEASURED_OBJECTS:  # ids may skip values: count the objects
            n = len(np.unique(result.labels)) - int(bool(np.any(result.labels == 0)))
        if n > MAX_MEASURED_OBJECTS:
            measured = Measured(
                result.labels,
                None,
                f"{n} objects are too many to measure with every prediction: tick "
                "'Measure' under Export to write their measurements",
            )
        else:
            measured = measure_result(result.labels, image, channel_axis=axis, measure=measure)
    return Predicted(bundle if loaded_from else None, result, loaded_from, measured)


@reraise_runtime_errors
def retrain_job(
    images: Sequence[np.ndarray],
    annotations: Sequence[np.ndarray],
    finetune_config: dict[str, Any],
    bundle: Any,
    image: Any,
    *,
    names: Sequence[str],
    scored: Sequence[int],
    rgb: bool,
    predict_config: dict[str, Any],
    stop: threading.Event | None = None,
    measure: dict[str, Any] | None = None,
    in_child: bool = True,
    **predict_kwargs: Any,
) -> Generator[Any, None, Retrained]:
    """Fine-tune `bundle` on the training set, then predict `image` again.

    The fine-tune (:func:`napari_unet.core.finetune.iter_finetune`: training, then the
    old and the new model compared on the corrections) and the new prediction run in one
    child process (:func:`retrain_generator`) with `in_child`, the default: the
    fine-tuned model comes back as a :class:`._process.LazyBundle`, the prediction as
    :func:`predict_job`'s does. Yields TrainProgress, then PredictProgress. Stopping
    during training keeps the previous model and skips the prediction
    (``predicted.result`` is None). `predict_kwargs` go to ``iter_predict`` unchanged.
    """
    finetune = {"names": names, "scored": scored}
    predict = {"rgb": rgb, "predict_config": predict_config, "measure": measure}
    predict.update(predict_kwargs)
    arguments = (images, annotations, finetune_config, bundle, image)
    if not in_child:
        return (yield from retrain_generator(*arguments, stop=stop, **finetune, **predict))
    from napari_unet._widgets._process import NotSendable, run_in_child

    try:
        return (
            yield from run_in_child(
                f"{__name__}:retrain_generator",
                *arguments,
                stop=stop,
                advice=PREDICT_ADVICE,
                **finetune,
                **predict,
            )
        )
    except NotSendable as error:  # the image cannot travel: fine-tune there, predict here
        note = _not_sent_note(error)
    tuned = yield from run_in_child(
        f"{__name__}:finetune_generator",
        images,
        annotations,
        finetune_config,
        init=bundle,
        stop=stop,
        **finetune,
    )
    retrained = yield from _predict_tuned(tuned, image, stop=stop, **predict)
    if retrained.predicted.result is not None:
        retrained.predicted.result.notes.append(note)
    return retrained


def retrain_generator(
    images: Sequence[np.ndarray],
    annotations: Sequence[np.ndarray],
    finetune_config: dict[str, Any],
    bundle: Any,
    image: Any,
    *,
    names: Sequence[str],
    scored: Sequence[int],
    rgb: bool,
    predict_config: dict[str, Any],
    measure: dict[str, Any] | None = None,
    stop: Any = None,
    **predict_kwargs: Any,
) -> Generator[Any, None, Retrained]:
    """Fine-tune, then predict with the model kept; what retrains in the child."""
    tuned = yield from finetune_generator(
        images, annotations, finetune_config, names=names, init=bundle, scored=scored, stop=stop
    )
    return (
        yield from _predict_tuned(
            tuned,
            image,
            rgb=rgb,
            predict_config=predict_config,
            measure=measure,
            stop=stop,
            **predict_kwargs,
        )
    )


def _predict_tuned(
    tuned: Any,
    image: Any,
    *,
    rgb: bool,
    predict_config: dict[str, Any],
    measure: dict[str, Any] | None,
    stop: Any,
    **predict_kwargs: Any,
) -> Generator[Any, None, Retrained]:
    """Predict `image` with the model a fine-tune kept (unless it was stopped)."""
    if tuned.stopped or (stop is not None and stop.is_set()):
        return Retrained(tuned, Predicted(tuned.bundle, None))
    predicted = yield from predict_generator(
        tuned.bundle,
        image,
        rgb=rgb,
        config=predict_config,
        measure=measure,
        stop=stop,
        **predict_kwargs,
    )
    predicted.bundle = tuned.bundle
    return Retrained(tuned, predicted)


def finetune_generator(
    images: Sequence[np.ndarray],
    annotations: Sequence[np.ndarray],
    config: dict[str, Any],
    *,
    names: Sequence[str],
    init: Any,
    scored: Sequence[int],
    stop: Any = None,
) -> Generator[Any, None, Any]:
    """Run :func:`napari_unet.core.finetune.iter_finetune`; what retrains in the child."""
    from napari_unet._widgets._process import as_model_bundle
    from napari_unet.core.finetune import FinetuneConfig, iter_finetune

    return (
        yield from iter_finetune(
            images,
            annotations,
            as_model_bundle(init),
            FinetuneConfig(**config),
            names=names,
            scored=scored,
            stop=stop,
        )
    )


@reraise_runtime_errors
def split_job(
    data: np.ndarray, *, from_probability: bool, params: dict[str, Any]
) -> Generator[str, None, np.ndarray]:
    """Split touching nuclei in labels/a mask, or in a foreground probability image.

    Probabilities are thresholded, then split like a mask (:func:`split_array`).
    """
    yield "splitting"
    return split_array(data, from_probability=from_probability, params=params)


def split_and_measure_job(
    data: np.ndarray,
    *,
    from_probability: bool,
    params: dict[str, Any],
    image: np.ndarray | None = None,
    channel_axis: int | None = None,
    measure: dict[str, Any] | None = None,
) -> Generator[str, None, Measured]:
    """Split like :func:`split_job`, then measure the objects (:func:`measure_result`)."""
    yield "splitting"
    labels = split_array(data, from_probability=from_probability, params=params)
    yield "measuring"
    return measure_result(labels, image, channel_axis=channel_axis, measure=measure)


def split_array(data: np.ndarray, *, from_probability: bool, params: dict[str, Any]) -> np.ndarray:
    """Compute what :func:`split_job` returns; the live preview uses it too.

    ``params`` are a :class:`~napari_unet.core.split.SplitConfig`'s fields with the
    layer's ``axes`` and, for a z-stack, ``spacing`` (the voxel size in y/x pixels):
    :func:`napari_unet.core.volume.split_image` splits a z-stack in 3D (``min_size`` then
    in voxels), anything else plane by plane in 2D, as ``napari-unet split`` does.
    """
    from napari_unet.core.split import SplitConfig
    from napari_unet.core.volume import split_image

    settings = dict(params)
    axes, spacing = settings.pop("axes", None), settings.pop("spacing", None)
    return split_image(
        data,
        SplitConfig(**settings),
        probabilities=from_probability,
        axes=axes,
        spacing=spacing,
    )


@dataclass
class ExportItem:
    """One Labels layer to export, read on the main thread.

    Attributes
    ----------
    name : str
        The layer name (the ``image`` column of the measurements).
    labels : ndarray
    meta : dict
        ``scale`` and ``units`` of the layer, for the TIFF's pixel size.
    geometry : dict
        :func:`._common.layer_geometry` of the layer, for measuring.
    image : ndarray or None
        The image the labels were made from (intensity columns), if it is open.
    channel_axis : int or None
        Its channel axis.
    note : str
        Why there is no image (no intensity columns), or "".
    """

    name: str
    labels: np.ndarray
    meta: dict[str, Any]
    geometry: dict[str, Any]
    image: np.ndarray | None = None
    channel_axis: int | None = None
    note: str = ""


@dataclass
class Exported:
    """What :func:`export_job` wrote, and what the user should know about it."""

    files: list[Any]
    notes: list[str]


def export_job(
    items: Sequence[ExportItem],
    folder: Any,
    *,
    tiff: bool = True,
    rois: bool = False,
    measure: bool = False,
    overwrite: bool = False,
) -> Generator[str, None, Exported]:
    """Write label TIFFs, ImageJ ROI sets and one measurements CSV into `folder`.

    Files: ``<name>.tif``, ``<name>_rois.zip`` (one polygon per object, for Fiji's ROI
    Manager) and ``measurements.csv`` (one row per object and layer). Every target is
    checked before anything is written: when one exists and `overwrite` is off, nothing
    is written; every layer is traced and measured before the first file is written,
    so a layer that cannot be exported leaves the folder as it was. A layer without
    objects gets no ROI set. Yields what it is doing; returns an :class:`Exported`.
    """
    from pathlib import Path

    from napari_unet._writer import export_labels
    from napari_unet.core.io import check_writable_folder, safe_stems
    from napari_unet.core.measure import MEASUREMENTS_CSV

    if not items:
        raise NapariUnetError("Pick at least one Labels layer to export.")
    if not (tiff or rois or measure):
        raise NapariUnetError("Tick what to export: label images, ImageJ ROIs or measurements.")
    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NapariUnetError(f"{folder} is a file, not a folder: choose a folder.")
    stems = safe_stems([item.name for item in items])
    targets = []
    if tiff:
        targets += [folder / f"{stem}.tif" for stem in stems]
    if rois:
        targets += [folder / f"{stem}_rois.zip" for stem in stems]
    if measure:
        targets.append(folder / MEASUREMENTS_CSV)
    existing = [t.name for t in targets if t.exists()]
    if existing and not overwrite:
        raise NapariUnetError(
            f"{len(existing)} file(s) already exist in {folder}: {', '.join(existing[:5])}"
            + (", ..." if len(existing) > 5 else "")
            + ". Choose another folder or tick overwrite; nothing was written."
        )
    empty = [item.name for item in items if not np.any(item.labels)]
    if rois and len(empty) == len(items) and not (tiff or measure):
        raise NapariUnetError(
            f"Labels layer(s) {', '.join(empty)} hold no objects: there are no ROIs to "
            "write. Paint or predict objects first; nothing was written."
        )
    check_writable_folder(folder)
    notes = [item.note for item in items if item.note and measure]
    # everything that can fail on the data is done before the first file is written
    traced: dict[str, list] = {}
    if rois:
        from napari_unet.core.rois import labels_to_rois

        for stem, item in zip(stems, items, strict=True):
            if item.name in empty:  # no objects, no ROI set (the summary says so)
                continue
            yield f"tracing the objects of {item.name}"
            axes = measure_options(item.geometry, item.labels.ndim)["axes"]
            try:
                traced[stem] = labels_to_rois(item.labels, axes=axes)
            except NapariUnetError as error:
                raise NapariUnetError(f"{item.name}: {error} Nothing was written.") from error
    tables = []
    if measure:
        for item in items:
            yield f"measuring {item.name}"
            measured = measure_result(
                item.labels, item.image, channel_axis=item.channel_axis, measure=item.geometry
            )
            if measured.features is None:
                raise NapariUnetError(f"{item.name}: {measured.note} Nothing was written.")
            if measured.note:
                notes.append(f"{item.name}: {measured.note}")
            tables.append((item.name, {k: v for k, v in measured.features.items() if k != "index"}))
    written: list[Path] = []
    try:
        if tiff:
            yield "writing label images"
            written += export_labels(
                ((stem, item.labels, item.meta) for stem, item in zip(stems, items, strict=True)),
                folder,
                overwrite=overwrite,
            )
        if rois:
            from napari_unet.core.rois import write_roi_zip

            yield "writing ImageJ ROI sets"
            for stem, rois_of_layer in traced.items():
                path, _ = write_roi_zip(
                    folder / f"{stem}_rois.zip", None, rois=rois_of_layer, overwrite=overwrite
                )
                written.append(path)
        if measure:
            from napari_unet.core.measure import write_measurements_csv

            path, _ = write_measurements_csv(folder / MEASUREMENTS_CSV, tables, overwrite=overwrite)
            written.append(path)
    except NapariUnetError as error:  # e.g. a full disk: say what is there
        done = ", ".join(p.name for p in written)
        raise NapariUnetError(
            f"{error}" + (f" Written before: {done}." if done else " Nothing was written.")
        ) from error
    return Exported(written, notes)


def bioimageio_job(
    bundle: Any,
    out: Any,
    *,
    test_image: np.ndarray | None = None,
    channel_axis: int | None = None,
    name: str | None = None,
) -> Generator[str, None, Any]:
    """Write `bundle` as a bioimage.io package (:mod:`napari_unet.core.bioimageio`).

    `test_image` (e.g. a training image, channels at `channel_axis`) becomes the
    package's test input and cover. napari's save dialog has already asked before
    replacing `out`. Yields what it is doing; returns the package's path.
    """
    from napari_unet._widgets._process import as_model_bundle
    from napari_unet.core.bioimageio import export_bioimageio

    yield "exporting"
    bundle = as_model_bundle(bundle)  # a model a child process sent is loaded here
    if test_image is not None and channel_axis is not None:
        test_image = np.moveaxis(np.asarray(test_image), channel_axis, 0)
    return export_bioimageio(bundle, out, name=name, test_image=test_image, overwrite=True)
