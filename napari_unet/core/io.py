"""Reading and writing images, label images and Kaggle run-length encodings.

Only numpy, tifffile and imageio (a scikit-image dependency) are used here.
Everything that writes a user's file goes through :func:`atomic_write`, so an
interrupted run never leaves a half-written file under the real name.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import glob
import os
import re
import secrets
import socket
import stat
import struct
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path

import numpy as np
import tifffile

from napari_unet.core.errors import NapariUnetError

__all__ = [
    "IMAGE_SUFFIXES",
    "TIME_AXIS_NAMES",
    "LABEL_STEM_SUFFIXES",
    "atomic_write",
    "check_writable_folder",
    "file_lock",
    "image_axes",
    "labels_to_rle",
    "list_image_files",
    "normalise_unit",
    "pair_images_and_labels",
    "read_calibration",
    "read_image",
    "read_labels",
    "resolved",
    "safe_stems",
    "stack_axes",
    "staged_outputs",
    "rle_decode",
    "text_name",
    "rle_encode",
    "write_labels_tiff",
    "write_rle_csv",
]

IMAGE_SUFFIXES = (".png", ".tif", ".tiff", ".jpg", ".jpeg", ".bmp")
"""File suffixes (lower case) that :func:`list_image_files` accepts."""

LABEL_STEM_SUFFIXES = ("_labels", "_mask", "_masks")
"""Endings of a label file's stem that :func:`pair_images_and_labels` strips."""

_TIFF_SUFFIXES = (".tif", ".tiff")
_IGNORED_NAMES = frozenset({"thumbs.db", "desktop.ini"})
_GLOB_CHARS = frozenset("*?[")
# What the image readers raise for a missing, truncated or foreign file.
_READ_ERRORS = (
    OSError,
    ValueError,
    SyntaxError,
    RuntimeError,
    EOFError,
    IndexError,
    KeyError,
    struct.error,
    zlib.error,
)
_UINT16_MAX = int(np.iinfo(np.uint16).max)
_UINT32_MAX = int(np.iinfo(np.uint32).max)
# Length of one unit in centimetres, for the TIFF ResolutionUnit tag.
_UNIT_IN_CM = {
    "nm": 1e-7,
    "um": 1e-4,
    "µm": 1e-4,
    "\u03bcm": 1e-4,
    "micron": 1e-4,
    "microns": 1e-4,
    "mm": 0.1,
    "cm": 1.0,
    "m": 100.0,
}


# --------------------------------------------------------------------------- listing


def _is_image_file(path: Path) -> bool:
    name = path.name
    return (
        not name.startswith(".")
        and name.lower() not in _IGNORED_NAMES
        and path.suffix.lower() in IMAGE_SUFFIXES
        and path.is_file()
    )


def list_image_files(path: str | os.PathLike[str]) -> list[Path]:
    """List the image files in a folder, matching a glob pattern, or a single file.

    Parameters
    ----------
    path : str or path-like
        A folder (its image files, not recursive), a glob pattern that may
        contain ``*``, ``?``, ``[...]`` and ``**`` (recursive), or one file.

    Returns
    -------
    list of Path
        Sorted paths whose suffix is in :data:`IMAGE_SUFFIXES` (any case).
        Hidden files (``.DS_Store``, macOS ``._x.png``), ``Thumbs.db`` and
        ``desktop.ini`` are skipped.

    Raises
    ------
    NapariUnetError
        If the folder or file does not exist, the single file is not an
        image, or nothing matches.

    Examples
    --------
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> for name in ["b.png", "a.TIF", ".DS_Store", "notes.txt"]:
    ...     _ = (folder / name).write_bytes(b"")
    >>> [p.name for p in list_image_files(folder)]
    ['a.TIF', 'b.png']
    """
    text = os.fspath(path)
    target = Path(text).expanduser()
    suffixes = ", ".join(IMAGE_SUFFIXES)
    if target.is_dir():
        try:
            found = [p for p in target.iterdir() if _is_image_file(p)]
        except PermissionError as exc:
            raise NapariUnetError(
                f"cannot read the folder {target}: permission denied; make it readable "
                "(chmod u+rx)."
            ) from exc
        where = f"folder {target}"
    elif target.is_file():
        if not _is_image_file(target):
            raise NapariUnetError(
                f"{target} is not an image file this plugin reads (suffix "
                f"{target.suffix!r}); use one of {suffixes}."
            )
        found = [target]
        where = str(target)
    elif _GLOB_CHARS.intersection(text):
        pattern = os.path.expanduser(text)
        found = [Path(p) for p in glob.glob(pattern, recursive=True)]
        found = [p for p in found if _is_image_file(p)]
        where = f"pattern {pattern!r}"
    else:
        raise NapariUnetError(
            f"{target} does not exist; give an existing folder, an image file or a glob "
            "pattern such as 'data/images/*.png'."
        )
    if not found:
        raise NapariUnetError(
            f"no image files (PNG or TIFF) in {where}; accepted suffixes are {suffixes}."
        )
    unique: dict[Path, Path] = {}  # one file reached twice (symlinks, a loop) counts once
    for p in sorted(found):
        unique.setdefault(p.resolve(), p)
    return sorted(unique.values())


# --------------------------------------------------------------------------- reading


def _read_raw(path: Path, *, palette_indices: bool = False) -> tuple[np.ndarray, int | None]:
    """Read a file; return the array and the axis holding colour samples (or None)."""
    if not path.is_file():
        raise NapariUnetError(f"cannot read {path}: no such file.")
    if not os.access(path, os.R_OK):
        raise NapariUnetError(
            f"cannot read {path}: permission denied; make it readable (e.g. chmod u+r) or "
            "copy it somewhere you can read it."
        )
    is_tiff = path.suffix.lower() in _TIFF_SUFFIXES
    try:
        if is_tiff:
            with tifffile.TiffFile(path) as tif:
                if not tif.series:
                    raise NapariUnetError(
                        f"cannot read {path}: the TIFF holds no image; is the file complete?"
                    )
                data = tif.asarray()
                axes = tif.series[0].axes
            sample_axis = axes.find("S") if len(axes) == data.ndim else -1
            sample_axis = None if sample_axis < 0 else sample_axis
        else:
            import imageio.v3 as iio

            mode = None
            if palette_indices and iio.immeta(path, plugin="pillow").get("mode") == "P":
                mode = "P"
            data = np.asarray(iio.imread(path, plugin="pillow", mode=mode))
            sample_axis = data.ndim - 1 if data.ndim == 3 and data.shape[-1] in (2, 3, 4) else None
    except NapariUnetError:
        raise
    except _READ_ERRORS as exc:
        if "imagecodecs" in str(exc):  # a compression tifffile decodes only with it
            raise NapariUnetError(
                f"cannot read {path}: its compression needs the 'imagecodecs' package ({exc}). "
                "Install it (pip install imagecodecs) and try again."
            ) from exc
        raise NapariUnetError(
            f"cannot read {path}: {exc}. The file may be truncated or not an image; "
            "re-export it or remove it from the folder."
        ) from exc
    if data.size == 0:
        raise NapariUnetError(f"cannot read {path}: it contains no pixels.")
    if data.dtype.kind not in "biuf":  # complex, text, structured: not an image's pixels
        what = "complex numbers" if data.dtype.kind == "c" else f"of type {data.dtype}"
        raise NapariUnetError(
            f"cannot read {path}: its pixels are {what} ({data.dtype}), not intensities; save "
            "an integer or floating-point image (e.g. the magnitude or the real part)."
        )
    return data, sample_axis


def _drop_constant_alpha(data: np.ndarray, sample_axis: int | None) -> np.ndarray:
    """Remove an alpha channel (4th of RGBA, 2nd of grey+alpha) that is constant."""
    if sample_axis is None or data.shape[sample_axis] not in (2, 4):
        return data
    alpha = np.take(data, -1, axis=sample_axis)
    if alpha.min() != alpha.max():
        return data
    kept = np.take(data, np.arange(data.shape[sample_axis] - 1), axis=sample_axis)
    if kept.shape[sample_axis] == 1:
        kept = np.squeeze(kept, axis=sample_axis)
    return kept


def read_image(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an image as stored, dropping a constant alpha channel.

    PNG, JPEG and BMP are read with imageio, TIFF with tifffile. The dtype is
    kept (no rescaling).

    Parameters
    ----------
    path : str or path-like
        The image file.

    Returns
    -------
    (Y, X) or (Y, X, C) or (..., Y, X) ndarray
        The pixels. RGBA whose alpha is the same everywhere (the DSB2018 PNGs
        have alpha 255) comes back as RGB ``(Y, X, 3)``; an RGBA image with a
        real alpha keeps its 4 channels; grey + constant alpha comes back as
        ``(Y, X)``.

    Raises
    ------
    NapariUnetError
        If the file does not exist or cannot be decoded (truncated, corrupt,
        not an image); the message names the file.
    """
    data, sample_axis = _read_raw(Path(path))
    return _drop_constant_alpha(data, sample_axis)


def _as_label_array(array: np.ndarray, what: str) -> np.ndarray:
    """Check a label array: integer or bool (-> uint8), integral float -> int, no negatives."""
    array = np.asarray(array)
    if array.dtype == bool:
        return array.astype(np.uint8)
    if np.issubdtype(array.dtype, np.floating):
        if not np.isfinite(array).all():
            raise NapariUnetError(
                f"{what} holds NaN or infinite values; labels must be whole numbers >= 0."
            )
        if array.size and not np.array_equal(array, np.round(array)):
            raise NapariUnetError(
                f"{what} has dtype {array.dtype} with non-integer values; label images "
                "hold whole numbers (0 = background, 1..N = objects). Did you pass a "
                "probability map? Threshold it first."
            )
        high = float(array.max()) if array.size else 0.0
        low = float(array.min()) if array.size else 0.0
        if low < 0:
            raise NapariUnetError(f"{what} has negative values (min {low:g}); labels must be >= 0.")
        return array.astype(np.int32 if high <= np.iinfo(np.int32).max else np.int64)
    if not np.issubdtype(array.dtype, np.integer):
        raise NapariUnetError(
            f"{what} has dtype {array.dtype}; label images must be integer or bool."
        )
    if np.issubdtype(array.dtype, np.signedinteger) and array.size and array.min() < 0:
        raise NapariUnetError(
            f"{what} has negative values (min {int(array.min())}); labels must be >= 0."
        )
    return array


def read_labels(path: str | os.PathLike[str]) -> np.ndarray:
    """Read a label image (0 = background, 1..N = objects).

    Parameters
    ----------
    path : str or path-like
        A TIFF or PNG label image. Palette PNGs are read as their indices.

    Returns
    -------
    (Y, X) or (..., Y, X) ndarray of int
        The labels. bool becomes uint8 0/1; float with whole values becomes
        int32; an RGB(A) file whose channels are all equal becomes one channel.

    Raises
    ------
    NapariUnetError
        If the file cannot be read, has real colour (channels differ), or
        holds non-integer or negative values.
    """
    path = Path(path)
    data, sample_axis = _read_raw(path, palette_indices=True)
    if sample_axis is not None:
        first = np.take(data, 0, axis=sample_axis)
        channels = data.shape[sample_axis]
        if channels == 4 or channels == 2:
            alpha = np.take(data, -1, axis=sample_axis)
            if alpha.min() == alpha.max():
                channels -= 1
        for c in range(1, channels):
            if not np.array_equal(np.take(data, c, axis=sample_axis), first):
                raise NapariUnetError(
                    f"label image {path} has {data.shape[sample_axis]} colour channels "
                    f"(shape {data.shape}) that differ; save labels as a single-channel "
                    "integer image (e.g. a uint16 TIFF) with 0 = background and 1..N = objects."
                )
        data = first
    return _as_label_array(data, f"label image {path}")


def image_axes(path: str | os.PathLike[str]) -> tuple[str | None, int]:
    """Return the axes a TIFF's metadata gives its first image, and its number of images.

    Parameters
    ----------
    path : str or path-like

    Returns
    -------
    axes : str or None
        tifffile's axis letters for the array :func:`read_image` returns (``"TZCYX"``
        for an ImageJ hyperstack, ``"YXS"`` for RGB, ...), when the file says what its
        axes are (ImageJ, OME-TIFF or RGB samples); None for other files and for
        TIFFs whose axes are unknown (tifffile's ``Q``).
    n_series : int
        The number of images (series) in the file; 1 for PNG and JPEG.
    """
    path = Path(path)
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        return None, 1
    try:
        with tifffile.TiffFile(path) as tif:
            if not tif.series:
                return None, 0
            axes = tif.series[0].axes
            known = tif.is_imagej or tif.is_ome or "S" in axes
            shape = tif.series[0].shape
            n_series = len(tif.series)
    except _READ_ERRORS as exc:
        raise NapariUnetError(f"cannot read {path}: {exc}.") from exc
    # read_image drops axes of length 1 only when tifffile does; keep what fits
    if not known or "Q" in axes or len(axes) != len(shape):
        return None, n_series
    return axes, n_series


#: napari axis labels that name a time axis (a 3D layer is then a time series).
TIME_AXIS_NAMES = frozenset({"t", "time", "frame", "frames", "timepoint", "timepoints"})


def stack_axes(axis_labels: Sequence[object] | None, ndim: int) -> str | None:
    """Return "TYX" for 3D data whose first axis is named like time, else None.

    napari layers name their axes (``layer.axis_labels``); a 3D layer whose first axis
    is ``t``, ``time``, ``frame`` ... is a time series, any other 3D layer a z-stack
    (None: the default reading).

    Examples
    --------
    >>> stack_axes(["t", "y", "x"], 3), stack_axes(["z", "y", "x"], 3), stack_axes(None, 3)
    ('TYX', None, None)
    """
    names = [str(a).strip().lower() for a in (axis_labels or ())]
    if ndim == 3 and len(names) >= 3 and names[-3] in TIME_AXIS_NAMES:
        return "TYX"
    return None


_UNIT_NAMES = {
    "micrometer": "um",
    "micrometre": "um",
    "micron": "um",
    "microns": "um",
    "\u00b5m": "um",
    "\u03bcm": "um",
    "\\u00b5m": "um",  # ImageJ writes the micro sign as this escape
    "nanometer": "nm",
    "nanometre": "nm",
    "millimeter": "mm",
    "millimetre": "mm",
    "centimeter": "cm",
    "centimetre": "cm",
    "meter": "m",
    "metre": "m",
    "pixels": "pixel",
    "px": "pixel",
}


def normalise_unit(unit: object) -> str:
    r"""Return the short name of a length unit: "um" for micrometer, micron, µm, ...

    napari's pint units ("micrometer"), ImageJ's units ("micron", "\\u00B5m") and
    plain text all map to one name; "pixel" (napari's default) stays "pixel", and an
    unknown unit is returned as it is (stripped).

    Examples
    --------
    >>> normalise_unit("micrometer"), normalise_unit("\\u00B5m"), normalise_unit(None)
    ('um', 'um', 'pixel')
    """
    if unit is None:
        return "pixel"
    text = str(unit).strip()
    return _UNIT_NAMES.get(text.lower(), text) or "pixel"


def read_calibration(
    path: str | os.PathLike[str],
) -> tuple[str | None, tuple[float, float] | None, str | None]:
    """Axes, pixel size and unit stored in a TIFF file, where it stores them.

    Parameters
    ----------
    path : str or path-like
        An image or label file. Files other than TIFF store none of these.

    Returns
    -------
    axes : str or None
        tifffile's axis letters of the first series (``"YX"``, ``"ZYX"``, ``"TYX"``,
        ``"YXS"``, ...), or None.
    pixel_size : (float, float) or (float, float, float) or None
        Pixel size (Y, X) from the resolution tags, or (Z, Y, X) when the file is an
        ImageJ stack with a slice spacing; None when the file has none or says 1 pixel
        per unit with no unit.
    unit : str or None
        The unit of `pixel_size` (:func:`normalise_unit`): the ImageJ ``unit``, or
        ``"cm"`` / ``"inch"`` from a plain TIFF's resolution unit.
    """
    path = Path(path)
    if path.suffix.lower() not in _TIFF_SUFFIXES:
        return None, None, None
    try:
        with tifffile.TiffFile(path) as tif:
            axes = tif.series[0].axes if tif.series else None
            page = tif.pages[0]
            ij = tif.imagej_metadata or {}
            xres, yres = page.tags.get("XResolution"), page.tags.get("YResolution")
            res_unit = page.tags.get("ResolutionUnit")
            res_unit = int(res_unit.value) if res_unit is not None else 1
    except _READ_ERRORS as exc:
        raise NapariUnetError(f"cannot read {path}: {exc}.") from exc
    unit = ij.get("unit")
    if isinstance(unit, bytes):
        unit = unit.decode("utf-8", "replace")
    if unit is None:
        unit = {2: "inch", 3: "cm"}.get(res_unit)
    if unit is not None:
        unit = normalise_unit(unit)
    pixel_size = None
    if xres is not None and yres is not None:
        try:
            px = xres.value[1] / xres.value[0]
            py = yres.value[1] / yres.value[0]
        except (ZeroDivisionError, TypeError, IndexError):
            px = py = 0.0
        if px > 0 and py > 0 and np.isfinite(px) and np.isfinite(py):
            pixel_size = (float(py), float(px))
    if unit is None or (pixel_size == (1.0, 1.0) and not ij.get("unit")):
        pixel_size, unit = None, None
    elif unit == "cm" and ij.get("unit") is None and pixel_size is not None:
        pixel_size, unit = (pixel_size[0] * 1e4, pixel_size[1] * 1e4), "um"
    spacing = ij.get("spacing")
    if pixel_size is not None and isinstance(spacing, (int, float)) and spacing > 0:
        pixel_size = (float(spacing),) + pixel_size  # the ImageJ slice spacing: Z
    return axes, pixel_size, unit


# --------------------------------------------------------------------------- pairing


def _stem(path: Path) -> str:
    stem = path.stem
    if stem.lower().endswith(".ome"):
        stem = stem[:-4]
    return stem


def _label_key(path: Path) -> tuple[str, bool]:
    """Return (key, had_suffix): the stem with a label suffix (``_masks``...) removed."""
    stem = _stem(path)
    lower = stem.lower()
    for suffix in LABEL_STEM_SUFFIXES:
        if lower.endswith(suffix) and len(stem) > len(suffix):
            return stem[: -len(suffix)], True
    return stem, False


def text_name(name: str) -> str:
    r"""Return a file name as valid UTF-8 text, for a CSV cell or a message.

    On Linux a file name may hold bytes that are not UTF-8 (a Latin-1 ``café.png`` from an
    old archive); Python names them with surrogates (``'caf\udce9'``), which no UTF-8 text
    file can hold. Such bytes are written as ``\xNN`` escapes; other names are returned as
    they are.

    Examples
    --------
    >>> text_name("a"), text_name(os.fsdecode(b"caf\xe9"))
    ('a', 'caf\\xe9')
    """
    try:
        name.encode("utf-8")
        return name
    except UnicodeEncodeError:
        pass
    try:
        raw = name.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # lone surrogates that are not escaped bytes
        return name.encode("utf-8", "backslashreplace").decode("utf-8")
    return raw.decode("utf-8", "backslashreplace")


def safe_stems(names: Sequence[str], fallback: str = "image") -> list[str]:
    """Return file stems for names (layer names): one rule for every file napari-unet names.

    Letters, digits, ``-``, ``_`` and ``.`` (ASCII: a name that works on every file
    system, in a zip and in a shell script); every other run of characters becomes
    ``_``, leading and trailing ``.`` and ``_`` are dropped, an empty stem is
    `fallback`. Stems are unique ignoring case (for Windows and macOS): a repeated one
    gets ``-2``, ``-3``, ...

    Examples
    --------
    >>> safe_stems(["cells 1", "cells/1", "a", "?"])
    ['cells_1', 'cells_1-2', 'a', 'image']
    """
    out: list[str] = []
    seen: set[str] = set()
    for name in names:
        stem = re.sub(r"[^A-Za-z0-9._-]+", "_", str(name)).strip("._") or fallback
        candidate, k = stem, 1
        while candidate.lower() in seen:
            k += 1
            candidate = f"{stem}-{k}"
        seen.add(candidate.lower())
        out.append(candidate)
    return out


def resolved(path: str | os.PathLike[str]) -> Path:
    """Return the absolute path with symbolic links resolved; a link loop is a clear error.

    Raises
    ------
    NapariUnetError
        If a symbolic link on the way points to itself or around in a loop.
    """
    try:
        return Path(path).expanduser().resolve()
    except (RuntimeError, OSError) as exc:  # Python < 3.13: RuntimeError("Symlink loop")
        raise NapariUnetError(
            f"{path} cannot be followed: a symbolic link on the way points to itself or around "
            "in a loop; fix or remove the link."
        ) from exc


def pair_images_and_labels(
    images: Sequence[Path], labels: Sequence[Path]
) -> tuple[list[tuple[Path, Path]], list[Path]]:
    """Pair image files with label files by file stem.

    ``a.png`` pairs with ``a.tif`` and also with ``a_labels.tif``,
    ``a_mask.png`` or ``a_masks.tif`` (an exact stem wins over a suffixed one).
    When both lists come from the same folder, a file whose stem ends with a
    label suffix counts as a label, any other as an image.

    Parameters
    ----------
    images, labels : sequence of Path
        Image files and label files, e.g. from :func:`list_image_files`.

    Returns
    -------
    pairs : list of (Path, Path)
        ``(image, label)`` in the order of `images`.
    images_without_labels : list of Path
        Images for which no label file was found (e.g. to predict on).

    Raises
    ------
    NapariUnetError
        If no image has a label file, or two label files claim the same image.

    Examples
    --------
    >>> pairs, rest = pair_images_and_labels(
    ...     [Path("a.png"), Path("b.png")], [Path("a_masks.tif")]
    ... )
    >>> pairs, rest
    ([(PosixPath('a.png'), PosixPath('a_masks.tif'))], [PosixPath('b.png')])
    """
    images = [Path(p) for p in images]
    labels = [Path(p) for p in labels]
    overlap = set(images) & set(labels)
    if overlap:
        is_label = {p: _label_key(p)[1] for p in overlap}
        images = [p for p in images if not is_label.get(p, False)]
        labels = [p for p in labels if is_label.get(p, True)]

    by_key: dict[str, tuple[Path, bool]] = {}
    for label in labels:
        key, suffixed = _label_key(label)
        if key in by_key:
            other, other_suffixed = by_key[key]
            if other_suffixed == suffixed:
                raise NapariUnetError(
                    f"two label files match image stem {key!r}: {other} and {label}; "
                    "keep one of them."
                )
            if suffixed:  # the exact stem already there wins
                continue
        by_key[key] = (label, suffixed)

    pairs: list[tuple[Path, Path]] = []
    unlabelled: list[Path] = []
    for image in images:
        match = by_key.get(_stem(image))
        if match is None:
            unlabelled.append(image)
        else:
            pairs.append((image, match[0]))
    if not pairs:

        def few(paths: Sequence[Path]) -> str:
            names = [_stem(p) for p in paths[:3]]
            more = f", ... ({len(paths)} in all)" if len(paths) > 3 else ""
            return ", ".join(names) + more if names else "(none)"

        raise NapariUnetError(
            "no image has a label file with the same name: image stems are "
            f"{few(images)}; label stems are {few(labels)}. Name each label file like its "
            "image (a.png -> a.tif), optionally with _labels, _mask or _masks (a_masks.tif)."
        )
    return pairs, unlabelled


# --------------------------------------------------------------------------- writing


def _fsync_dir(folder: Path) -> None:
    """Flush a folder entry to disk (POSIX only; Windows cannot open folders)."""
    if os.name == "nt":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def check_writable_folder(folder: str | os.PathLike[str]) -> Path:
    """Check, before long work, that files can later be written into `folder`.

    Nothing is left behind: the folder is not created, and the probe file
    (``.napari-unet-probe.<random>.tmp``, in the folder or in its nearest existing
    parent when the folder does not exist yet) is removed at once.

    Parameters
    ----------
    folder : str or path-like
        Where the output files will go.

    Returns
    -------
    Path
        `folder`, with ``~`` expanded.

    Raises
    ------
    NapariUnetError
        If a parent of `folder` is a file, or the folder (or its nearest
        existing parent) cannot be written to.

    Examples
    --------
    >>> import tempfile
    >>> check_writable_folder(Path(tempfile.mkdtemp()) / "new" / "sub").name
    'sub'
    """
    folder = Path(folder).expanduser()
    existing = folder
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise NapariUnetError(
            f"cannot create folder {folder}: {existing} is a file, not a folder; "
            "choose another output path."
        )
    probe = existing / f".napari-unet-probe.{secrets.token_hex(4)}.tmp"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    except OSError as exc:
        raise NapariUnetError(
            f"cannot write to folder {existing}: {exc.strerror or exc}; "
            "choose a folder you can write to."
        ) from exc
    os.close(fd)
    probe.unlink()
    return folder


#: errno values of a full disk or an exhausted quota.
_DISK_FULL = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Write a file under a temporary name and move it into place when done.

    Parameters
    ----------
    path : str or path-like
        The final file. Its folder is created if missing. An existing file is
        replaced only when the block finishes without an exception (callers
        check for overwriting themselves).

    Yields
    ------
    Path
        A new, empty temporary file in the same folder, named
        ``.<name>.<random>.tmp``, created with the usual permissions (umask).
        Write the content there (any writer that opens the path for writing).

    Raises
    ------
    NapariUnetError
        If the folder cannot be created or written to, or the disk is full (the
        previous file is then unchanged).

    Notes
    -----
    On a clean exit the temporary file is flushed to disk (``fsync``) and
    ``os.replace``-d onto `path`, which is atomic on one file system, so readers
    see either the old file or the complete new one. On an exception the
    temporary file is removed and the exception propagates unchanged. A process
    killed mid-write (SIGKILL, power loss) leaves only that temporary file,
    ``.<name>.<8 hex digits>.tmp``, next to the intact old file; nothing reads
    it and it may be deleted (``tests/test_atomic_kill.py`` checks this).

    Examples
    --------
    >>> import tempfile
    >>> target = Path(tempfile.mkdtemp()) / "out.txt"
    >>> with atomic_write(target) as tmp:
    ...     _ = tmp.write_text("done")
    >>> target.read_text()
    'done'
    """
    target = Path(path).expanduser()
    folder = target.parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NapariUnetError(
            f"cannot create folder {folder} for {target.name}: {exc.strerror or exc}; "
            "choose a folder you can write to."
        ) from exc
    if target.is_dir():
        raise NapariUnetError(f"{target} is a folder; give a file name to write to.")
    for _ in range(100):
        tmp = folder / f".{target.name}.{secrets.token_hex(4)}.tmp"
        try:
            # 0o666 & ~umask: the same permissions a plain open() would give.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            continue
        except OSError as exc:
            raise NapariUnetError(
                f"cannot write to folder {folder}: {exc.strerror or exc}; "
                "choose a folder you can write to."
            ) from exc
        os.close(fd)
        break
    else:  # pragma: no cover - 100 random collisions
        raise NapariUnetError(f"cannot create a temporary file in {folder}.")
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            handle.flush()
            os.fsync(handle.fileno())
        with contextlib.suppress(FileNotFoundError):  # a replaced file keeps its mode
            os.chmod(tmp, stat.S_IMODE(os.stat(target).st_mode))
        os.replace(tmp, target)
    except BaseException as exc:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        if isinstance(exc, OSError) and exc.errno in _DISK_FULL:
            kept = "the previous file is unchanged" if target.exists() else "nothing was written"
            raise NapariUnetError(
                f"the disk holding {folder} is full: {target.name} was not saved ({kept}). "
                "Free some space or choose another folder, then try again."
            ) from exc
        raise
    with contextlib.suppress(OSError):  # the data is in place; a dir fsync is a bonus
        _fsync_dir(folder)


def _pid_alive(pid: int) -> bool:
    """Whether a process with this id runs on this machine (True when unsure)."""
    if pid <= 0:
        return False
    if os.name == "nt":  # os.kill would terminate the process on Windows
        import ctypes

        kernel32 = ctypes.windll.kernel32  # type: ignore[attr-defined]
        handle = kernel32.OpenProcess(0x1000, False, pid)  # QUERY_LIMITED_INFORMATION
        if not handle:
            return kernel32.GetLastError() == 5  # access denied: it exists
        code = ctypes.c_ulong()
        kernel32.GetExitCodeProcess(handle, ctypes.byref(code))
        kernel32.CloseHandle(handle)
        return code.value == 259  # STILL_ACTIVE
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _lock_owner(lock: Path) -> tuple[int | None, str]:
    """Read ``(pid, host)`` from a lock file; ``(None, "")`` if unreadable or empty."""
    try:
        fields = lock.read_text(encoding="utf-8").split()
        return int(fields[0]), (fields[1] if len(fields) > 1 else "")
    except (OSError, ValueError, IndexError):
        return None, ""


@contextlib.contextmanager
def file_lock(
    path: str | os.PathLike[str], *, note: Callable[[str], None] | None = None
) -> Iterator[Path]:
    """Hold ``<path>.lock`` while writing `path`, so a second run refuses to write it too.

    The lock file is created with ``O_CREAT | O_EXCL`` (only one process can
    create it) and holds ``"<pid> <host>"``. It is removed when the block ends,
    also on an exception or Ctrl-C. A lock left by a process that no longer
    runs on this machine (killed, crashed) is taken over, with a note.

    Parameters
    ----------
    path : str or path-like
        The file about to be written (e.g. a model file); its folder is
        created if missing.
    note : callable, optional
        Called with a one-line message when a stale lock is taken over.

    Yields
    ------
    Path
        The lock file.

    Raises
    ------
    NapariUnetError
        If another running process holds the lock, or the folder cannot be
        written to.

    Examples
    --------
    >>> import tempfile
    >>> model = Path(tempfile.mkdtemp()) / "m.pt"
    >>> with file_lock(model) as lock:
    ...     lock.name, lock.exists()
    ('m.pt.lock', True)
    >>> lock.exists()
    False
    """
    target = Path(path).expanduser()
    lock = target.with_name(target.name + ".lock")
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise NapariUnetError(
            f"cannot create folder {lock.parent} for {target.name}: {exc.strerror or exc}; "
            "choose a folder you can write to."
        ) from exc
    host = "".join(socket.gethostname().split()) or "?"
    for _ in range(3):
        try:
            fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        except FileExistsError:
            pid, owner_host = _lock_owner(lock)
            if pid is None:  # just created by another run that has not written its pid yet
                with contextlib.suppress(OSError):
                    age = time.time() - lock.stat().st_mtime
                    if age > 10:
                        pid = -1  # empty for long: its writer died at once
            held = pid is None or (pid > 0 and (owner_host != host or _pid_alive(pid)))
            if held:
                who = f"process {pid}" if pid else "a process"
                if owner_host and owner_host != host:
                    who += f" on {owner_host}"
                raise NapariUnetError(
                    f"{target} is being written by another run ({who}, lock file {lock}); "
                    "wait for it to end or choose another output. If no such run exists, "
                    f"delete {lock}."
                ) from None
            if note is not None:
                gone = f"process {pid} has ended" if pid > 0 else "it was left empty"
                note(f"note: taking over the stale lock {lock} ({gone})")
            with contextlib.suppress(FileNotFoundError):
                lock.unlink()
            continue
        except OSError as exc:
            raise NapariUnetError(
                f"cannot write to folder {lock.parent}: {exc.strerror or exc}; "
                "choose a folder you can write to."
            ) from exc
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as handle:
                handle.write(f"{os.getpid()} {host}\n")
        except OSError as exc:  # e.g. a full disk: leave no empty lock behind
            with contextlib.suppress(OSError):
                lock.unlink()
            full = exc.errno in _DISK_FULL
            raise NapariUnetError(
                f"cannot write the lock file {lock}: "
                + ("the disk is full; free some space" if full else f"{exc.strerror or exc}")
                + ", then try again."
            ) from exc
        break
    else:  # pragma: no cover - three runs racing for one stale lock
        raise NapariUnetError(f"cannot take the lock {lock}: other runs keep taking it; retry.")
    try:
        yield lock
    finally:
        with contextlib.suppress(FileNotFoundError):
            lock.unlink()


@contextlib.contextmanager
def staged_outputs(folder: str | os.PathLike[str]) -> Iterator[Callable[[Path], Path]]:
    """Write several output files so that they appear together, or not at all.

    Yields a function that maps each final path (in `folder`) to a path in a hidden
    staging folder, ``<folder>/.napari-unet-staging-<random>/``, where the caller
    writes it. When the block ends normally every staged file is moved to its final
    path (each move is atomic); when it raises, the staging folder is removed and the
    final paths are as they were, so a rerun finds no half-written results. A folder
    this function had to create is removed again when nothing was written into it.
    """
    folder = Path(folder).expanduser()
    created = not folder.exists()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        stage = folder / f".napari-unet-staging-{secrets.token_hex(4)}"
        stage.mkdir()
    except OSError as exc:
        raise NapariUnetError(
            f"cannot write to folder {folder}: {exc.strerror or exc}; choose a folder you "
            "can write to."
        ) from exc
    staged: dict[Path, Path] = {}

    def where(final: Path) -> Path:
        staged[Path(final)] = stage / Path(final).name
        return staged[Path(final)]

    try:
        yield where
        for final, tmp in staged.items():
            if tmp.exists():
                with contextlib.suppress(FileNotFoundError):  # keep a replaced file's mode
                    os.chmod(tmp, stat.S_IMODE(os.stat(final).st_mode))
                os.replace(tmp, final)
    finally:
        import shutil

        shutil.rmtree(stage, ignore_errors=True)
        if created:
            with contextlib.suppress(OSError):
                folder.rmdir()  # only when empty: nothing was written


def _check_overwrite(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise NapariUnetError(
            f"{path} exists; pass overwrite=True (--overwrite on the command line) to replace it."
        )


def _pixel_size_yx(pixel_size: float | tuple[float, ...]) -> tuple[float, float]:
    if isinstance(pixel_size, (int, float, np.number)):
        size_y = size_x = float(pixel_size)
    else:
        values = tuple(float(v) for v in pixel_size)
        if len(values) not in (2, 3):
            raise NapariUnetError(
                f"pixel_size must be one number, (y, x) or (z, y, x), got {pixel_size!r}."
            )
        size_y, size_x = values[-2:]
    if not (np.isfinite(size_y) and np.isfinite(size_x) and size_y > 0 and size_x > 0):
        raise NapariUnetError(f"pixel_size must be positive, got {pixel_size!r}.")
    return size_y, size_x


def write_labels_tiff(
    path: str | os.PathLike[str],
    labels: np.ndarray,
    *,
    pixel_size: float | tuple[float, float] | None = None,
    unit: str = "um",
    overwrite: bool = False,
    axes: str | None = None,
) -> Path:
    """Save a label image as a zlib-compressed TIFF, atomically.

    Labels up to 65535 are written as an ImageJ-compatible uint16 TIFF
    (hyperstack axes, pixel size and unit in the ImageJ metadata). Larger
    labels are written as a plain uint32 TIFF, because ImageJ hyperstacks
    cannot hold uint32; tifffile, napari and Fiji's Bio-Formats read it, and the
    pixel size is then stored in the TIFF resolution tags (centimetre units).
    A stack one pixel wide is written as a plain TIFF too: tifffile cannot
    read such an ImageJ stack back. The values read back with
    ``tifffile.imread`` equal `labels` (tifffile may drop a leading axis of
    length 1 on reading).

    Parameters
    ----------
    path : str or path-like
        Output file (``.tif``). A missing folder is created.
    labels : (Y, X) or (Z, Y, X) or (T, Z, Y, X) ... ndarray of int or bool
        0 = background, 1..N = objects. Whole-valued floats are accepted.
    pixel_size : float or (float, float) or (float, float, float), optional
        Pixel size, one value or ``(y, x)``, in `unit`; or the voxel size ``(z, y, x)``
        of a z-stack: Fiji then shows the stack with its z-step (ImageJ ``spacing``).
    unit : str, optional
        Unit of `pixel_size`, e.g. ``"um"`` (ImageJ shows micron).
    overwrite : bool, optional
        Replace an existing file. Default False.
    axes : str, optional
        Axis letters for the ImageJ metadata, one per dimension, ending in
        ``"YX"``; default ``"YX"``, ``"ZYX"``, ``"TZYX"``, ``"TZCYX"`` by
        dimension. Use ``"TYX"`` for a time series.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    NapariUnetError
        If the labels are negative, not integer, not at least 2-D, the file
        exists and `overwrite` is False, or the folder cannot be written.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "labels.tif"
    >>> labels = np.array([[0, 1], [2, 2]], dtype=np.int32)
    >>> _ = write_labels_tiff(out, labels, pixel_size=0.5)
    >>> tifffile.imread(out).tolist()
    [[0, 1], [2, 2]]
    """
    path = Path(path).expanduser()
    labels = _as_label_array(labels, "labels")
    if labels.ndim < 2:
        raise NapariUnetError(f"labels must be at least 2-D (Y, X), got shape {labels.shape}.")
    default_axes = {2: "YX", 3: "ZYX", 4: "TZYX", 5: "TZCYX"}
    if axes is None:
        axes = default_axes.get(labels.ndim)
    elif len(axes) != labels.ndim or not axes.upper().endswith("YX"):
        raise NapariUnetError(
            f"axes {axes!r} does not fit labels of shape {labels.shape}; give one letter "
            "per dimension ending in 'YX', e.g. 'TYX' or 'ZYX'."
        )
    _check_overwrite(path, overwrite)
    high = int(labels.max()) if labels.size else 0
    if high > _UINT32_MAX:
        raise NapariUnetError(
            f"labels go up to {high}, more than a TIFF uint32 can hold; relabel them "
            "consecutively (skimage.segmentation.relabel_sequential)."
        )
    size_yx = None if pixel_size is None else _pixel_size_yx(pixel_size)
    z_step = None
    if size_yx is not None and not isinstance(pixel_size, (int, float, np.number)):
        if len(tuple(pixel_size)) == 3:
            z_step = float(tuple(pixel_size)[0])
            if not (np.isfinite(z_step) and z_step > 0):
                raise NapariUnetError(f"pixel_size must be positive, got {pixel_size!r}.")
    # tifffile cannot read back an ImageJ stack one pixel wide: write a plain TIFF then.
    imagej = (
        high <= _UINT16_MAX and axes is not None and not (labels.ndim > 2 and labels.shape[-1] == 1)
    )
    kwargs: dict = {"compression": "zlib"}
    if imagej:
        data = labels.astype(np.uint16, copy=False)
        metadata: dict = {"axes": axes.upper()}
        if size_yx is not None:
            kwargs["resolution"] = (1.0 / size_yx[1], 1.0 / size_yx[0])
            metadata["unit"] = unit
            if z_step is not None and "Z" in axes.upper():
                metadata["spacing"] = z_step
        kwargs.update(imagej=True, metadata=metadata)
    else:
        data = labels.astype(np.uint16 if high <= _UINT16_MAX else np.uint32, copy=False)
        kwargs.update(photometric="minisblack", metadata={"axes": axes} if axes else None)
        if size_yx is not None:
            in_cm = _UNIT_IN_CM.get(unit.strip().lower()) or _UNIT_IN_CM.get(unit.strip())
            if in_cm is not None:
                kwargs["resolution"] = (1.0 / (size_yx[1] * in_cm), 1.0 / (size_yx[0] * in_cm))
                kwargs["resolutionunit"] = "CENTIMETER"
            else:
                kwargs["resolution"] = (1.0 / size_yx[1], 1.0 / size_yx[0])
                kwargs["resolutionunit"] = "NONE"
    with atomic_write(path) as tmp:
        tifffile.imwrite(tmp, data, **kwargs)
    return path


# --------------------------------------------------------------------------- RLE


def rle_encode(mask: np.ndarray) -> str:
    """Run-length encode a 2-D mask in the DSB2018 Kaggle format.

    Pixels are numbered from 1, top to bottom then left to right (column-major,
    Fortran order); the result is ``"start length start length ..."``.

    Parameters
    ----------
    mask : (Y, X) ndarray of bool
        The object; nonzero values count as True.

    Returns
    -------
    str
        The encoding; ``""`` for an empty mask.

    Raises
    ------
    NapariUnetError
        If `mask` is not 2-D.

    Examples
    --------
    >>> rle_encode(np.array([[0, 1], [1, 1]], dtype=bool))
    '2 3'
    """
    mask = np.asarray(mask)
    if mask.ndim != 2:
        raise NapariUnetError(f"rle_encode needs a 2-D (Y, X) mask, got shape {mask.shape}.")
    pixels = np.concatenate([[False], mask.astype(bool).ravel(order="F"), [False]])
    changes = np.flatnonzero(pixels[1:] != pixels[:-1]) + 1
    starts, ends = changes[::2], changes[1::2]
    runs = np.empty(2 * len(starts), dtype=np.int64)
    runs[::2] = starts
    runs[1::2] = ends - starts
    return " ".join(map(str, runs.tolist()))


def rle_decode(rle: str, shape: tuple[int, int]) -> np.ndarray:
    """Decode a DSB2018 Kaggle run-length encoding (see :func:`rle_encode`).

    Parameters
    ----------
    rle : str
        ``"start length ..."`` with 1-based, column-major starts; may be empty.
    shape : (int, int)
        ``(Y, X)`` of the image.

    Returns
    -------
    (Y, X) ndarray of bool
        The mask.

    Raises
    ------
    NapariUnetError
        If the string is not pairs of positive integers or a run leaves the image.

    Examples
    --------
    >>> rle_decode("2 3", (2, 2)).astype(int).tolist()
    [[0, 1], [1, 1]]
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise NapariUnetError(f"rle_decode needs a 2-D shape (Y, X), got {shape}.")
    n_pixels = shape[0] * shape[1]
    try:
        numbers = np.array([int(tok) for tok in str(rle).split()], dtype=np.int64)
    except ValueError as exc:
        raise NapariUnetError(
            f"run-length encoding {rle[:60]!r} holds something other than integers."
        ) from exc
    if len(numbers) % 2:
        raise NapariUnetError(
            f"run-length encoding has {len(numbers)} numbers; it must be start/length pairs."
        )
    starts, lengths = numbers[::2] - 1, numbers[1::2]
    if len(numbers) and (
        starts.min() < 0 or lengths.min() < 1 or (starts + lengths).max() > n_pixels
    ):
        raise NapariUnetError(
            f"run-length encoding does not fit an image of shape {shape} "
            f"({n_pixels} pixels, numbered from 1, lengths >= 1)."
        )
    flat = np.zeros(n_pixels + 1, dtype=np.int32)
    np.add.at(flat, starts, 1)
    np.add.at(flat, starts + lengths, -1)
    return (np.cumsum(flat[:-1]) > 0).reshape(shape, order="F")


def labels_to_rle(labels: np.ndarray) -> list[str]:
    """Encode every object of a 2-D label image (see :func:`rle_encode`).

    Parameters
    ----------
    labels : (Y, X) ndarray of int
        0 = background; labels need not be consecutive.

    Returns
    -------
    list of str
        One encoding per object present, in increasing label order.

    Raises
    ------
    NapariUnetError
        If `labels` is not a 2-D non-negative integer image.

    Examples
    --------
    >>> labels_to_rle(np.array([[0, 2], [5, 2]]))
    ['3 2', '2 1']
    """
    labels = _as_label_array(labels, "labels")
    if labels.ndim != 2:
        raise NapariUnetError(f"labels_to_rle needs 2-D (Y, X) labels, got {labels.shape}.")
    flat = labels.ravel(order="F")
    positions = np.flatnonzero(flat)  # column-major pixel index, increasing
    if positions.size == 0:
        return []
    values = flat[positions]
    order = np.argsort(values, kind="stable")  # group by label, positions stay sorted
    positions, values = positions[order], values[order]
    # A run starts where the label changes or the position jumps.
    new_run = np.ones(len(positions), dtype=bool)
    new_run[1:] = (values[1:] != values[:-1]) | (positions[1:] != positions[:-1] + 1)
    run_starts = np.flatnonzero(new_run)
    run_lengths = np.diff(np.append(run_starts, len(positions)))
    run_values = values[run_starts]
    run_pos = positions[run_starts] + 1
    object_starts = np.flatnonzero(np.r_[True, run_values[1:] != run_values[:-1]])
    object_ends = np.append(object_starts[1:], len(run_values))
    result = []
    for lo, hi in zip(object_starts.tolist(), object_ends.tolist(), strict=True):
        pairs = np.empty(2 * (hi - lo), dtype=np.int64)
        pairs[::2] = run_pos[lo:hi]
        pairs[1::2] = run_lengths[lo:hi]
        result.append(" ".join(map(str, pairs.tolist())))
    return result


def write_rle_csv(
    path: str | os.PathLike[str],
    items: Mapping[str, np.ndarray],
    *,
    overwrite: bool = False,
) -> Path:
    r"""Write label images as a DSB2018 Kaggle submission CSV, atomically.

    Parameters
    ----------
    path : str or path-like
        Output ``.csv`` file.
    items : mapping of str to (Y, X) ndarray of int
        Image id -> label image. An id that is not valid UTF-8 (from a file name) is
        written with ``\xNN`` escapes (:func:`text_name`).
    overwrite : bool, optional
        Replace an existing file. Default False.

    Returns
    -------
    Path
        The written file: header ``ImageId,EncodedPixels``, one row per object
        in label order; an image without objects gets one row with an empty
        ``EncodedPixels``.

    Raises
    ------
    NapariUnetError
        If the file exists and `overwrite` is False, or a label image is invalid.
    """
    path = Path(path).expanduser()
    _check_overwrite(path, overwrite)
    rows: list[tuple[str, str]] = []
    for image_id, labels in items.items():
        encoded = labels_to_rle(labels)
        rows.extend((text_name(image_id), rle) for rle in encoded or [""])
    with atomic_write(path) as tmp:
        with open(tmp, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle, lineterminator="\n")
            writer.writerow(("ImageId", "EncodedPixels"))
            writer.writerows(rows)
    return path
