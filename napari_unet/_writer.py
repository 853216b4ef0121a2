"""napari writers: Labels layers to TIFF (File > Save Selected Layer(s)).

The files are written by :func:`napari_unet.core.io.write_labels_tiff`: zlib-compressed,
uint16 when the labels fit (uint32 otherwise), ImageJ-compatible, written atomically,
with the layer's pixel size when it has one. They open in Fiji/ImageJ and read back
identical with ``tifffile.imread``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from napari_unet.core.errors import NapariUnetError

_UNIT_ABBREVIATIONS = {
    "micrometer": "um",
    "micron": "um",
    "µm": "um",
    "nanometer": "nm",
    "millimeter": "mm",
    "meter": "m",
}


def _as_array(data: Any) -> np.ndarray:
    """Return labels layer data as one in-memory array (level 0 if multiscale)."""
    if isinstance(data, list | tuple):  # multiscale: the full-resolution level
        data = data[0]
    return np.asarray(data)


def _pixel_size(meta: dict[str, Any]) -> tuple[tuple[float, float] | None, str]:
    """Pixel size (Y, X) and its unit from napari layer attributes, if it has one.

    napari's default (scale 1, unit "pixel") means "no calibration": None. A scale other
    than 1 with no physical unit is taken to be in micrometres.
    """
    scale = meta.get("scale")
    units = meta.get("units")
    unit = str(units[-1]) if units is not None and len(units) else "pixel"
    unit = _UNIT_ABBREVIATIONS.get(unit, unit)
    if scale is None or len(scale) < 2:
        return None, "um"
    size = (float(scale[-2]), float(scale[-1]))
    if unit == "pixel":
        return (None, "um") if size == (1.0, 1.0) else (size, "um")
    return size, unit


def _safe_stem(name: str) -> str:
    """Turn a layer name into a file name stem that works on every OS."""
    stem = re.sub(r"[^\w.\-]+", "_", name).strip("._")
    return stem or "labels"


def write_labels(path: str, data: Any, meta: dict[str, Any]) -> list[str]:
    """Write one Labels layer to a ``.tif``/``.tiff`` file (napari single-layer writer).

    Parameters
    ----------
    path : str
        Target file. napari's save dialog has already asked before overwriting.
    data : (..., Y, X) array-like of int
        The layer data (multiscale: the full-resolution level is written).
    meta : dict
        napari layer attributes; ``scale`` and ``units`` give the pixel size.

    Returns
    -------
    list of str
        The path written.
    """
    from napari_unet.core.io import write_labels_tiff

    pixel_size, unit = _pixel_size(meta)
    written = write_labels_tiff(
        path, _as_array(data), pixel_size=pixel_size, unit=unit, overwrite=True
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
    if folder.suffix.lower() in (".tif", ".tiff"):
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
    jobs: list[tuple[Path, Any, dict[str, Any]]] = []
    used: set[str] = set()
    for name, data, meta in items:
        stem = _safe_stem(name)
        candidate, n = stem, 1
        while candidate.lower() in used:
            n += 1
            candidate = f"{stem}_{n}"
        used.add(candidate.lower())
        jobs.append((folder / f"{candidate}.tif", data, meta))
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
        pixel_size, unit = _pixel_size(meta)
        try:
            path = write_labels_tiff(
                target, _as_array(data), pixel_size=pixel_size, unit=unit, overwrite=True
            )
        except NapariUnetError as error:
            done = f"{len(written)} of {len(jobs)} file(s) were written before: " if written else ""
            raise NapariUnetError(f"{done}{error}") from error
        written.append(Path(path))
    return written
