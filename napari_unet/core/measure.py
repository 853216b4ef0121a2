"""Measurements per object: size, position, shape and intensity, as a table.

:func:`measure_labels` measures every object of a label image with
:func:`skimage.measure.regionprops_table`, in pixels and, when the pixel size is
known, in calibrated units (``area_um2``, ``centroid_x_um``, ...). A 2D image gives
one row per object; a z-stack (``"ZYX"``) one row per object measured in 3D (its
volume, its 3D centroid); a time series (``"TYX"``, ``"TZYX"``) one row per object
and frame, with a ``frame`` column. :func:`write_measurements_csv` writes tables of
several images as one CSV, with the image name in a column, for spreadsheets,
pandas or R.

The columns (2D; a 3D stack has ``volume`` and ``z`` columns instead of ``area``,
and neither ``eccentricity`` nor ``perimeter``):

=========================  ==============================================================
``label``                  the object's value in the label image
``area``                   pixels (``volume``: voxels)
``centroid_y/x``           centre of mass, pixels from the top-left corner
``bbox_min_y/x``           first row / column of the bounding box
``bbox_max_y/x``           one past its last row / column
``equivalent_diameter``    diameter of the disc (sphere) of the same area (volume), pixels
``eccentricity``           0 for a disc, towards 1 for elongated objects
``solidity``               area / area of the convex hull (1: convex, lower: lobed;
                           empty for flat objects, which have no hull)
``perimeter``              pixels (4- and diagonal-connected contour length)
``mean/max/min_intensity`` of the image under the object, per channel
                           (``mean_intensity_c0`` ... for several channels)
=========================  ==============================================================

Calibrated columns repeat the size and position columns in the pixel size's unit
(``area_um2``, ``volume_um3``, ``centroid_y_um``, ``equivalent_diameter_um``,
``perimeter_um`` where the pixels are square).
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from napari_unet.core.errors import NapariUnetError

__all__ = [
    "AXES",
    "MEASUREMENTS_CSV",
    "default_axes",
    "measure_labels",
    "table_rows",
    "write_measurements_csv",
]

#: The file name napari-unet gives a measurements table next to its exports.
MEASUREMENTS_CSV = "measurements.csv"

#: Label layouts :func:`measure_labels` knows: 2D, a z-stack, a time series,
#: a time series of z-stacks.
AXES = ("YX", "ZYX", "TYX", "TZYX")

_PROPS_2D = (
    "label",
    "area",
    "centroid",
    "bbox",
    "equivalent_diameter_area",
    "solidity",
    "perimeter",
)
_PROPS_3D = ("label", "area", "centroid", "bbox", "equivalent_diameter_area", "solidity")
_INTENSITY = ("intensity_mean", "intensity_max", "intensity_min")
_NO_UNIT = {"", "pixel", "pixels", "px", "none"}
#: Label ids above this are renumbered for measuring (and given back in the table).
_MAX_DIRECT_ID = 2**20


def default_axes(ndim: int) -> str:
    """Axis letters assumed for a label image of `ndim` dimensions (3: a z-stack).

    Examples
    --------
    >>> default_axes(2), default_axes(3), default_axes(4)
    ('YX', 'ZYX', 'TZYX')
    """
    axes = {2: "YX", 3: "ZYX", 4: "TZYX"}.get(ndim)
    if axes is None:
        raise NapariUnetError(
            f"labels of {ndim} dimensions cannot be measured: give 2D (Y, X), a z-stack "
            "(Z, Y, X), a time series (T, Y, X) or (T, Z, Y, X)."
        )
    return axes


def _unit_suffix(unit: str | None) -> str | None:
    """Column suffix for `unit` ("um" for micrometre), or None for pixels."""
    from napari_unet.core.io import normalise_unit

    if unit is None:
        return None
    text = normalise_unit(unit)
    if text.lower() in _NO_UNIT:
        return None
    return re.sub(r"[^A-Za-z0-9]+", "_", text).strip("_") or None


def _image_channels_last(image: np.ndarray, shape: tuple[int, ...], channel_axis: int | None):
    """`image` as (*shape) or (*shape, C); raises when it does not fit the labels."""
    image = np.asarray(image)
    if channel_axis is not None:
        if image.ndim != len(shape) + 1:
            raise NapariUnetError(
                f"the image of shape {image.shape} has no channel axis {channel_axis} besides "
                f"the labels' {len(shape)} axes {shape}."
            )
        image = np.moveaxis(image, channel_axis, -1)
    elif image.ndim == len(shape) + 1 and image.shape[1:] == shape:
        image = np.moveaxis(image, 0, -1)  # channels first, e.g. a (C, Y, X) layer
    if image.shape[: len(shape)] != shape or image.ndim > len(shape) + 1:
        raise NapariUnetError(
            f"the image of shape {image.shape} does not fit the labels of shape {shape}: "
            "measure labels with the image they were made from."
        )
    if image.dtype.kind not in "biuf":
        raise NapariUnetError(f"the image holds {image.dtype} values, not numbers.")
    if image.dtype.kind == "f":
        bad = int(np.count_nonzero(~np.isfinite(image)))
        if bad:
            raise NapariUnetError(
                f"the image holds NaN or infinite values ({bad} of {image.size} pixels), so "
                "the intensities of the objects touching them would be NaN; replace them "
                "(e.g. with 0), or measure without the image."
            )
    return image


_MIN_PIXEL_SIZE = 1e-9
_MAX_PIXEL_SIZE = 1e9


def _check_spacing(scale: Sequence[float] | None, n: int) -> tuple[float, ...] | None:
    if scale is None:
        return None
    values = tuple(float(v) for v in scale)[-n:]
    if len(values) != n or not all(math.isfinite(v) and v > 0 for v in values):
        raise NapariUnetError(
            f"the pixel size must be {n} positive numbers (one per spatial axis), got {scale!r}."
        )
    if not all(_MIN_PIXEL_SIZE <= v <= _MAX_PIXEL_SIZE for v in values):
        # areas and volumes in the unit would round to 0 or overflow to infinity
        raise NapariUnetError(
            f"the pixel size must be from {_MIN_PIXEL_SIZE:g} to {_MAX_PIXEL_SIZE:g} in its "
            f"unit, got {scale!r}; give it in a unit that fits (e.g. 0.325 um)."
        )
    return values


def _eccentricity(labels: np.ndarray, ids: np.ndarray, top: np.ndarray, left: np.ndarray):
    """Eccentricity of each object `ids` of a 2D label image, all objects at once.

    The same value as regionprops' ``eccentricity`` (from the eigenvalues of the
    inertia tensor of the object's pixel coordinates), from per-object sums of the
    coordinates and their products taken with :func:`numpy.bincount` over the image
    once, instead of regionprops' moments per object (half of the time of a table).
    Coordinates are taken from each object's bounding-box corner (`top`, `left`), so
    the sums stay small.
    """
    if not len(ids):
        return np.zeros(0)
    flat = labels.ravel()
    inside = np.flatnonzero(flat)
    lab = flat[inside]
    lut = np.zeros(int(ids.max()) + 1, dtype=np.int64)
    lut[ids] = np.arange(len(ids))
    k = lut[lab]
    y = (inside // labels.shape[1] - top[k]).astype(np.float64)
    x = (inside % labels.shape[1] - left[k]).astype(np.float64)
    n = np.bincount(k, minlength=len(ids)).astype(np.float64)
    my = np.bincount(k, y, len(ids)) / n
    mx = np.bincount(k, x, len(ids)) / n
    yy = np.bincount(k, y * y, len(ids)) / n - my * my
    xx = np.bincount(k, x * x, len(ids)) / n - mx * mx
    xy = np.bincount(k, x * y, len(ids)) / n - mx * my
    half = (yy + xx) / 2
    root = np.sqrt(np.maximum(((yy - xx) / 2) ** 2 + xy * xy, 0.0))
    major, minor = half + root, np.maximum(half - root, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ecc = np.sqrt(np.clip(1.0 - minor / major, 0.0, 1.0))
    return np.where(major > 0, ecc, 0.0)


def _measure_one(
    labels: np.ndarray,
    image: np.ndarray | None,
    spacing: tuple[float, ...] | None,
    suffix: str | None,
) -> dict[str, np.ndarray]:
    """Measure one 2D image or one 3D stack; the columns of the module docstring."""
    from skimage.measure import regionprops_table

    three_d = labels.ndim == 3
    names = ("z", "y", "x") if three_d else ("y", "x")
    props = _PROPS_3D if three_d else _PROPS_2D
    if image is not None:
        props = props + _INTENSITY
    with warnings.catch_warnings():
        # flat objects (one pixel wide, one slice thick) have no convex hull: qhull
        # warns and the solidity is undefined; it is set to NaN below
        warnings.simplefilter("ignore", UserWarning)
        warnings.simplefilter("ignore", RuntimeWarning)
        raw = regionprops_table(labels, intensity_image=image, properties=props)
    n = len(raw["label"])
    size = "volume" if three_d else "area"
    out: dict[str, np.ndarray] = {"label": raw["label"].astype(np.int64)}
    out[size] = raw["area"].astype(np.int64)
    for k, axis in enumerate(names):
        out[f"centroid_{axis}"] = raw[f"centroid-{k}"]
    d = len(names)
    for k, axis in enumerate(names):
        out[f"bbox_min_{axis}"] = raw[f"bbox-{k}"].astype(np.int64)
    for k, axis in enumerate(names):
        out[f"bbox_max_{axis}"] = raw[f"bbox-{k + d}"].astype(np.int64)
    out["equivalent_diameter"] = raw["equivalent_diameter_area"]
    if not three_d:
        out["eccentricity"] = _eccentricity(
            labels, out["label"], out["bbox_min_y"], out["bbox_min_x"]
        )
    solidity = np.asarray(raw["solidity"], dtype=np.float64)
    out["solidity"] = np.where(np.isfinite(solidity) & (solidity <= 1.0 + 1e-9), solidity, np.nan)
    if not three_d:
        out["perimeter"] = raw["perimeter"]
    if image is not None:
        channels = 1 if image.ndim == labels.ndim else image.shape[-1]
        for stat in ("mean", "max", "min"):
            for c in range(channels):
                key = f"intensity_{stat}" if channels == 1 else f"intensity_{stat}-{c}"
                name = f"{stat}_intensity" if channels == 1 else f"{stat}_intensity_c{c}"
                out[name] = raw[key].astype(np.float64)
    if spacing is not None and suffix is not None:
        cell = float(np.prod(spacing))
        out[f"{size}_{suffix}{'3' if three_d else '2'}"] = out[size] * cell
        for axis, s in zip(names, spacing, strict=True):
            out[f"centroid_{axis}_{suffix}"] = out[f"centroid_{axis}"] * s
        calibrated = out[size] * cell
        if three_d:
            out[f"equivalent_diameter_{suffix}"] = np.cbrt(6.0 * calibrated / np.pi)
        else:
            out[f"equivalent_diameter_{suffix}"] = np.sqrt(4.0 * calibrated / np.pi)
        if not three_d and math.isclose(spacing[0], spacing[1], rel_tol=1e-6):
            out[f"perimeter_{suffix}"] = out["perimeter"] * spacing[0]
    assert all(len(v) == n for v in out.values())
    return out


def measure_labels(
    labels: np.ndarray,
    image: np.ndarray | None = None,
    *,
    axes: str | None = None,
    channel_axis: int | None = None,
    scale: Sequence[float] | None = None,
    unit: str | None = None,
) -> dict[str, np.ndarray]:
    """Measure every object of a label image.

    Parameters
    ----------
    labels : (Y, X), (Z, Y, X), (T, Y, X) or (T, Z, Y, X) ndarray of int
        0 = background, each object its own value.
    image : ndarray, optional
        The image the labels belong to, the same shape as `labels`, with an optional
        channel axis (last, as RGB, or first; see `channel_axis`): mean, max and min
        intensity per object and channel. Without it, no intensity columns.
    axes : {"YX", "ZYX", "TYX", "TZYX"}, optional
        What the axes of `labels` are; default by dimension (:func:`default_axes`: a
        3D array is a z-stack). Objects of a z-stack are measured in 3D, those of a
        time series per frame.
    channel_axis : int, optional
        Axis of `image` holding the channels; default: the last axis when `image`
        has one more axis than `labels` and its other axes fit, else the first.
    scale : sequence of float, optional
        Pixel (voxel) size of the spatial axes, e.g. napari's ``layer.scale``; the
        last 2 (3 for a z-stack) values are used.
    unit : str, optional
        The unit of `scale`, e.g. "um" or "micrometer". Calibrated columns are added
        only when both are given and the unit is not "pixel".

    Returns
    -------
    dict of str to (N,) ndarray
        One column per measurement, one row per object (and frame); see the
        module docstring. Time series have a ``frame`` column first.

    Raises
    ------
    NapariUnetError
        Labels that are not whole numbers, negative, of an unknown layout, or an
        image or pixel size that does not fit them.

    Examples
    --------
    >>> labels = np.zeros((6, 8), dtype=np.uint16)
    >>> labels[1:3, 1:4] = 5
    >>> table = measure_labels(labels, scale=(0.5, 0.5), unit="um")
    >>> table["label"].tolist(), table["area"].tolist(), table["area_um2"].tolist()
    ([5], [6], [1.5])
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        labels = labels.astype(np.uint8)
    if labels.dtype.kind not in "iu":
        if labels.dtype.kind == "f" and labels.size and np.all(np.mod(labels, 1) == 0):
            labels = labels.astype(np.int64)
        else:
            raise NapariUnetError(
                f"labels must hold whole numbers (one value per object), got {labels.dtype}."
            )
    if labels.size and labels.min() < 0:
        raise NapariUnetError("labels hold negative values: 0 is background, 1.. are objects.")
    axes = (axes or default_axes(labels.ndim)).upper()
    if axes not in AXES or len(axes) != labels.ndim:
        raise NapariUnetError(
            f"axes {axes!r} do not fit labels of shape {labels.shape}: use one of {AXES} "
            "with one letter per axis."
        )
    if image is not None:
        image = _image_channels_last(image, labels.shape, channel_axis)
    ids = None
    if labels.size and int(labels.max()) > _MAX_DIRECT_ID:
        # regionprops sizes its per-object lists by the largest id: number the objects
        # 1..n for measuring and give them their ids back in the table
        ids, inverse = np.unique(labels, return_inverse=True)
        labels = inverse.reshape(labels.shape) + (0 if ids[0] == 0 else 1)
        ids = ids if ids[0] == 0 else np.concatenate([[0], ids])
    table = _measure_axes(labels, image, axes, scale, unit)
    if ids is not None:
        table["label"] = ids[table["label"]].astype(np.int64)
    return table


def _measure_axes(labels, image, axes: str, scale, unit) -> dict[str, np.ndarray]:
    """Measure checked `labels` of layout `axes`: in 2D or 3D, or per frame."""
    spatial = axes.lstrip("T")
    spacing = _check_spacing(scale, len(spatial))
    suffix = _unit_suffix(unit)
    if not axes.startswith("T"):
        return _measure_one(labels, image, spacing, suffix)
    frames = [
        _measure_one(labels[t], None if image is None else image[t], spacing, suffix)
        for t in range(labels.shape[0])
    ]
    if not frames:
        frames = [_measure_one(np.zeros(labels.shape[1:], labels.dtype), None, spacing, suffix)]
    columns = list(frames[0])
    out = {"frame": np.concatenate([np.full(len(f["label"]), t) for t, f in enumerate(frames)])}
    for key in columns:
        out[key] = np.concatenate([f[key] for f in frames])
    out["frame"] = out["frame"].astype(np.int64)
    return out


def table_rows(table: dict[str, np.ndarray]) -> int:
    """Return the number of rows (objects) of a table from :func:`measure_labels`."""
    return len(next(iter(table.values()))) if table else 0


def _format(value) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{float(value):.6g}" if math.isfinite(value) else ""
    return str(value)


def write_measurements_csv(
    path: str | os.PathLike[str],
    tables: Iterable[tuple[str, dict[str, np.ndarray]]],
    *,
    overwrite: bool = False,
) -> tuple[Path, int]:
    r"""Write measurement tables of one or more images as one CSV file.

    Parameters
    ----------
    path : str or path-like
        The ``.csv`` file; a missing folder is created. Written atomically.
    tables : iterable of (image name, table)
        Tables from :func:`measure_labels`. The CSV has an ``image`` column first;
        columns that only some tables have (e.g. calibrated ones) are left empty in
        the others. A name that is not valid UTF-8 (from a file name) is written with
        ``\xNN`` escapes (:func:`napari_unet.core.io.text_name`).
    overwrite : bool
        Replace an existing file.

    Returns
    -------
    (Path, int)
        The file and the number of object rows written.

    Raises
    ------
    NapariUnetError
        The file exists and `overwrite` is False, or `path` is a folder.
    """
    from napari_unet.core.io import atomic_write, check_writable_folder, text_name

    path = Path(path).expanduser()
    if path.is_dir():
        raise NapariUnetError(f"{path} is a folder: give a file name ending in .csv.")
    if path.exists() and not overwrite:
        raise NapariUnetError(
            f"{path} exists; pass --overwrite (or tick overwrite) to replace it, or choose "
            "another name."
        )
    tables = list(tables)
    check_writable_folder(path.parent)
    columns: list[str] = ["image"]
    for _, table in tables:
        columns += [c for c in table if c not in columns]
    rows = 0
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as fh:
            writer = csv.writer(fh)
            writer.writerow(columns)
            for name, table in tables:
                name = text_name(name)  # a file name that is not UTF-8: \xNN escapes
                n = table_rows(table)
                for i in range(n):
                    writer.writerow(
                        [name] + [_format(table[c][i]) if c in table else "" for c in columns[1:]]
                    )
                rows += n
    return path, rows
