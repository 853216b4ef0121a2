"""napari writers: Labels layers to TIFF or to ImageJ ROI sets (File > Save Selected Layer(s)).

The TIFF files are written by :func:`napari_unet.core.io.write_labels_tiff`:
zlib-compressed, uint16 when the labels fit (uint32 otherwise), ImageJ-compatible, written
atomically, with the layer's pixel size and unit when it has one. They open in Fiji/ImageJ
and read back identical with ``tifffile.imread``. The ROI sets (``.zip``, one outline per
object, named by its label id) are written by :func:`napari_unet.core.rois.write_roi_zip`
and open in Fiji's ROI Manager.

In napari's save dialog these writers are the file types "napari-unet labels TIFF" and
"napari-unet ImageJ ROI set"; napari preselects the first file type it lists for the
layer, which is usually napari's own "napari builtins labels" writer.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import normalise_unit, safe_stems, stack_axes

_TIFF_SUFFIXES = (".tif", ".tiff")


def _as_array(data: Any) -> np.ndarray:
    """Return labels layer data as one in-memory array (level 0 if multiscale)."""
    if isinstance(data, list | tuple):  # multiscale: the full-resolution level
        data = data[0]
    return np.asarray(data)


def _pixel_size(meta: dict[str, Any]) -> tuple[tuple[float, float] | None, str]:
    """Pixel size (Y, X) and its unit from napari layer attributes, if it has one.

    napari's default (scale 1, unit "pixel") means "no calibration": None. A scale other
    than 1 keeps the layer's unit; without a physical unit that is "pixel" (ImageJ shows
    e.g. "0.5 pixels" per pixel), never a guessed micrometre.
    """
    scale = meta.get("scale")
    units = meta.get("units")
    unit = str(units[-1]) if units is not None and len(units) else "pixel"
    unit = normalise_unit(unit)
    if scale is None or len(scale) < 2:
        return None, unit
    size = (float(scale[-2]), float(scale[-1]))
    if unit == "pixel" and size == (1.0, 1.0):
        return None, unit
    return size, unit


def _voxel_size(meta: dict[str, Any], ndim: int) -> tuple[tuple[float, ...] | None, str]:
    """:func:`_pixel_size`, with the z-step in front for a calibrated z-stack (Fiji's spacing)."""
    size, unit = _pixel_size(meta)
    scale = meta.get("scale")
    axes = _stack_axes(meta, ndim) or {3: "ZYX", 4: "TZYX"}.get(ndim, "")
    if size is None or "Z" not in axes or scale is None or len(scale) < 3:
        return size, unit
    return (float(scale[-3]),) + size, unit


def _stack_axes(meta: dict[str, Any], ndim: int) -> str | None:
    """Axis letters for a 3-D layer whose first axis is named like time ("TYX"), else None."""
    return stack_axes(meta.get("axis_labels"), ndim)


def _with_suffix(path: str, suffixes: tuple[str, ...]) -> str:
    """`path`, with the first of `suffixes` appended unless it already ends in one of them.

    napari's save dialog passes the name as typed (or the pre-filled layer name, which has
    no suffix) to the writer of the chosen file type. The dialog asked before replacing
    the name it was given, not the one with the suffix added: a file of that name is
    never replaced.
    """
    if path.lower().endswith(suffixes):
        return path
    target = path + suffixes[0]
    if Path(target).exists():
        raise NapariUnetError(
            f"{Path(target).name} exists already and was not replaced: type the whole name, "
            f"{Path(target).name}, to replace it (the save dialog then asks), or another name."
        )
    return target


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer to a ``.tif``/``.tiff`` file (napari single-layer writer).

    Parameters
    ----------
    path : str
        Target file. napari's save dialog has already asked before overwriting. A name
        that does not end in ``.tif``/``.tiff`` gets ``.tif`` appended.
    data : (..., Y, X) array-like of int
        The layer data (multiscale: the full-resolution level is written).
    meta : dict
        napari layer attributes; ``scale`` and ``units`` give the pixel size, a first
        axis labelled ``t``/``time`` makes a 3-D layer a time series.

    Returns
    -------
    list of str
        The path written.
    """
    from napari_unet.core.io import write_labels_tiff

    labels = _as_array(data)
    pixel_size, unit = _voxel_size(meta, labels.ndim)
    written = write_labels_tiff(
        _with_suffix(path, _TIFF_SUFFIXES),
        labels,
        pixel_size=pixel_size,
        unit=unit,
        overwrite=True,
        axes=_stack_axes(meta, labels.ndim),
    )
    return [str(written)]


def write_labels_rois(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer as an ImageJ ROI set (``.zip``; napari single-layer writer).

    One outline per object (per slice in a stack), named by its label id; see
    :func:`napari_unet.core.rois.labels_to_rois`. The coordinates are in pixels.

    Parameters
    ----------
    path : str
        Target file. napari's save dialog has already asked before overwriting. A name
        that does not end in ``.zip`` gets ``.zip`` appended.
    data : (Y, X) or (Z, Y, X) or (T, Y, X) or (T, Z, Y, X) array-like of int
        The layer data (multiscale: the full-resolution level is written).
    meta : dict
        napari layer attributes; a first axis labelled ``t``/``time`` makes a 3-D layer
        a time series (ROI names ``t03-0017`` instead of ``z03-0017``).

    Returns
    -------
    list of str
        The path written.

    Raises
    ------
    NapariUnetError
        If the layer holds no objects (nothing is written) or cannot be exported.
    """
    from napari_unet.core.rois import write_roi_zip

    labels = _as_array(data)
    written, _ = write_roi_zip(
        _with_suffix(path, (".zip",)),
        labels,
        axes=_stack_axes(meta, labels.ndim),
        overwrite=True,
    )
    return [str(written)]


def write_labels_folder(
    path: str, layer_data: Sequence[tuple[Any, dict[str, Any], str]]
) -> list[str]:
    """Write several Labels layers as ``<folder>/<layer name>.tif`` (multi-layer writer).

    Parameters
    ----------
    path : str
        The folder; created if missing. A trailing ``.tif``/``.tiff`` is dropped.
    layer_data : list of (data, meta, layer_type)
        The selected layers, as napari passes them.

    Returns
    -------
    list of str
        The files written.
    """
    folder = Path(path)
    if folder.suffix.lower() in _TIFF_SUFFIXES:
        folder = folder.with_suffix("")
    return [
        str(p)
        for p in export_labels(
            ((meta.get("name", "labels"), data, meta) for data, meta, _ in layer_data),
            folder,
            overwrite=True,
        )
    ]


def export_labels(
    items: Iterable[tuple[str, Any, dict[str, Any]]],
    folder: str | Path,
    *,
    overwrite: bool = False,
) -> list[Path]:
    """Write named label images to ``<folder>/<name>.tif``.

    The names become file stems as everywhere else in napari-unet
    (:func:`napari_unet.core.io.safe_stems`: ``a/b labels`` -> ``a_b_labels``, a second
    one ``a_b_labels-2``; an empty name ``labels``).

    Parameters
    ----------
    items : iterable of (name, data, meta)
        Layer name, (..., Y, X) labels data and napari layer attributes (for the pixel size).
    folder : str or Path
        Created if missing.
    overwrite : bool
        Replace existing files. When False and any target exists, nothing is written.

    Returns
    -------
    list of Path
        The files written, in order.

    Raises
    ------
    NapariUnetError
        If there is nothing to write, or files exist and `overwrite` is False.
    """
    from napari_unet.core.io import check_writable_folder, write_labels_tiff

    folder = Path(folder).expanduser()
    if folder.exists() and not folder.is_dir():
        raise NapariUnetError(
            f"{folder} is a file, not a folder: choose a folder to export the labels to."
        )
    items = list(items)
    stems = safe_stems([name for name, _, _ in items], fallback="labels")
    jobs = [
        (folder / f"{stem}.tif", data, meta)
        for stem, (_, data, meta) in zip(stems, items, strict=True)
    ]
    if not jobs:
        raise NapariUnetError("There are no Labels layers to export: add or predict labels first.")
    existing = [p.name for p, _, _ in jobs if p.exists()]
    if existing and not overwrite:
        raise NapariUnetError(
            f"{len(existing)} file(s) already exist in {folder}: {', '.join(existing)}. "
            "Choose another folder or allow overwriting."
        )
    check_writable_folder(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise NapariUnetError(
            f"cannot create folder {folder}: {error.strerror or error}."
        ) from error
    written: list[Path] = []
    for target, data, meta in jobs:
        labels = _as_array(data)
        pixel_size, unit = _voxel_size(meta, labels.ndim)
        try:
            path = write_labels_tiff(
                target,
                labels,
                pixel_size=pixel_size,
                unit=unit,
                overwrite=True,
                axes=_stack_axes(meta, labels.ndim),
            )
        except NapariUnetError as error:
            done = f"{len(written)} of {len(jobs)} file(s) were written before: " if written else ""
            raise NapariUnetError(f"{done}{error}") from error
        written.append(Path(path))
    return written
