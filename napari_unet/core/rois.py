"""Label images to ImageJ / Fiji ROI sets (``.zip`` files for the ROI Manager).

One ROI per object (per slice in a stack), named by its label id, traced along the
pixel edges like ImageJ's wand and *Analyze Particles* outlines: the vertices lie on
pixel corners, so ImageJ's polygon fill (a pixel is inside when its centre is) gives
back exactly the object's pixels.

* An object in one piece without holes becomes a traced polygon (``TRACED`` type,
  integer coordinates), as *Analyze Particles* makes.
* An object in several pieces, or with holes, becomes an ImageJ composite ROI
  (``ShapeRoi``: one closed path per outline, filled with the even-odd rule), which
  also gives back its pixels exactly. Pixels that touch only at a corner count as
  one piece (8-connectivity), as in ImageJ's wand.

The ROIs are written with `roifile <https://pypi.org/project/roifile/>`_ (by the
author of tifffile). Only numpy, scipy and roifile are used here.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import roifile
from scipy import ndimage as ndi

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import _as_label_array, _check_overwrite, atomic_write

__all__ = ["labels_to_rois", "write_roi_zip"]

#: Largest pixel coordinate an ImageJ ROI file can hold (16-bit, read unsigned above -5000).
MAX_COORDINATE = 60535
# A polygon stores its vertices as 16-bit offsets from its corner, read back as signed.
_MAX_POLYGON_EXTENT = 32767
# Above this largest label, objects are renumbered before scipy.ndimage.find_objects
# (whose list has one entry per label value up to the largest).
_MAX_DIRECT_LABEL = 1 << 20

# Directions of travel along pixel edges, clockwise on screen (rows grow downwards):
# east, south, west, north. Every outline keeps its object on the right-hand side, so
# outer outlines run clockwise and the outlines of holes counter-clockwise.
_D_ROW = np.array([0, 1, 0, -1])
_D_COL = np.array([1, 0, -1, 0])


# --------------------------------------------------------------------------- tracing


def _trace_outlines(mask: np.ndarray) -> list[np.ndarray]:
    """Trace the closed outlines of a 2-D mask along pixel edges.

    Parameters
    ----------
    mask : (M, N) ndarray of bool
        The object (a bounding-box crop).

    Returns
    -------
    list of (K, 2) ndarray of int
        One array per closed outline: its corner vertices ``(row, col)`` on the
        pixel-corner grid of `mask` (pixel ``(r, c)`` spans ``[r, r + 1] x [c, c + 1]``),
        without the closing repeat; outer outlines clockwise on screen, holes
        counter-clockwise. The first outline starts at the top-left corner of the
        first object pixel in raster order.
    """
    height, width = mask.shape[0] + 2, mask.shape[1] + 2
    padded = np.zeros((height, width), dtype=bool)
    padded[1:-1, 1:-1] = mask
    above, below = padded[:-1, :], padded[1:, :]
    left, right = padded[:, :-1], padded[:, 1:]
    # Directed edges, each starting at a pixel corner (row, col) of the padded grid.
    east_r, east_c = np.nonzero(below & ~above)  # object below the edge
    west_r, west_c = np.nonzero(above & ~below)  # object above
    south_r, south_c = np.nonzero(left & ~right)  # object left of the edge
    north_r, north_c = np.nonzero(right & ~left)  # object right
    rows = np.concatenate([east_r + 1, south_r, west_r + 1, north_r + 1])
    cols = np.concatenate([east_c, south_c + 1, west_c + 1, north_c + 1])
    dirs = np.concatenate(
        [
            np.full(east_r.size, 0),
            np.full(south_r.size, 1),
            np.full(west_r.size, 2),
            np.full(north_r.size, 3),
        ]
    )
    n_edges = rows.size
    # Each (corner, direction) starts at most one edge: index the edges by it.
    stride = width + 1
    table = np.full((height + 1) * stride * 4, -1, dtype=np.int64)
    table[(rows * stride + cols) * 4 + dirs] = np.arange(n_edges)
    end = ((rows + _D_ROW[dirs]) * stride + cols + _D_COL[dirs]) * 4
    # The next edge turns left, goes straight or turns right. Where two edges leave a
    # corner (object pixels touching only there), turning left keeps them one outline.
    successor = table[end + (dirs + 3) % 4]
    for turn in (0, 1):
        missing = successor < 0
        successor[missing] = table[end[missing] + (dirs[missing] + turn) % 4]

    # Every corner has as many edges in as out and the rule pairs them one to one, so
    # following the successors always comes back to the first edge of an outline.
    following = successor.tolist()
    seen = bytearray(n_edges)
    outlines = []
    for first in range(n_edges):
        if seen[first]:
            continue
        chain = [first]
        seen[first] = 1
        edge = following[first]
        while edge != first:
            seen[edge] = 1
            chain.append(edge)
            edge = following[edge]
        chain_arr = np.asarray(chain)
        chain_dirs = dirs[chain_arr]
        turns = np.empty(chain_arr.size, dtype=bool)
        turns[0] = chain_dirs[0] != chain_dirs[-1]
        np.not_equal(chain_dirs[1:], chain_dirs[:-1], out=turns[1:])
        corner = chain_arr[turns]
        outlines.append(np.stack([rows[corner] - 1, cols[corner] - 1], axis=1))
    return outlines


def _object_roi(outlines: list[np.ndarray], top: int, left: int, name: str) -> roifile.ImagejRoi:
    """One ImageJ ROI from the outlines of one object (crop offset `top`, `left`)."""
    if len(outlines) == 1:
        xy = outlines[0][:, ::-1] + (left, top)  # (x, y) = (col, row)
        low, high = xy.min(axis=0), xy.max(axis=0)
        if (high - low).max() <= _MAX_POLYGON_EXTENT:
            return roifile.ImagejRoi(
                roitype=roifile.ROI_TYPE.TRACED,
                name=name,
                left=int(low[0]),
                top=int(low[1]),
                right=int(high[0]),
                bottom=int(high[1]),
                n_coordinates=len(xy),
                integer_coordinates=(xy - low).astype(np.int32),
            )
    # Composite ROI (ImageJ ShapeRoi): MOVETO x y, LINETO x y ..., CLOSE per outline,
    # absolute coordinates, filled with the even-odd rule.
    path = []
    for outline in outlines:
        xy = outline[:, ::-1].astype(np.float32) + np.float32((left, top))
        segments = np.empty((len(xy), 3), dtype=np.float32)
        segments[:, 0] = 1.0  # LINETO
        segments[0, 0] = 0.0  # MOVETO
        segments[:, 1:] = xy
        path.append(segments.ravel())
        path.append(np.array([4.0], dtype=np.float32))  # CLOSE
    multi = np.concatenate(path)
    every = np.concatenate(outlines)
    (row0, col0), (row1, col1) = every.min(axis=0), every.max(axis=0)
    return roifile.ImagejRoi(
        roitype=roifile.ROI_TYPE.RECT,
        name=name,
        left=int(col0 + left),
        top=int(row0 + top),
        right=int(col1 + left),
        bottom=int(row1 + top),
        shape_roi_size=len(multi),
        multi_coordinates=multi,
    )


# --------------------------------------------------------------------------- labels


def _validate(labels: np.ndarray, axes: str | None) -> tuple[np.ndarray, str]:
    """Check the label image and its axes; return them (axes upper case)."""
    labels = _as_label_array(labels, "labels")
    if labels.ndim < 2 or labels.ndim > 4:
        raise NapariUnetError(
            f"labels must be 2-D (Y, X), 3-D (Z or T, Y, X) or 4-D (T, Z, Y, X) to export "
            f"ImageJ ROIs, got shape {labels.shape}."
        )
    default = {2: "YX", 3: "ZYX", 4: "TZYX"}[labels.ndim]
    axes = default if axes is None else str(axes).upper()
    lead = axes[:-2]
    if (
        len(axes) != labels.ndim
        or not axes.endswith("YX")
        or set(lead) - {"Z", "T"}
        or len(set(lead)) != len(lead)
    ):
        choices = {2: "'YX'", 3: "'ZYX' or 'TYX'", 4: "'TZYX'"}[labels.ndim]
        raise NapariUnetError(
            f"axes {axes!r} does not fit labels of shape {labels.shape}: give one letter "
            f"per dimension, {choices}."
        )
    if max(labels.shape[-2:]) > MAX_COORDINATE:
        raise NapariUnetError(
            f"labels of shape {labels.shape} are too large for ImageJ ROI files, which hold "
            f"pixel coordinates up to {MAX_COORDINATE}; export a crop or tiles."
        )
    return labels, axes


def _plane_objects(plane: np.ndarray) -> list[tuple[int, tuple[slice, slice]]]:
    """(label id, bounding box) of every object in a 2-D label image, by label."""
    high = int(plane.max()) if plane.size else 0
    if high == 0:
        return []
    if high <= _MAX_DIRECT_LABEL:
        boxes = ndi.find_objects(plane)
        return [(i, box) for i, box in enumerate(boxes, 1) if box is not None]
    ids, dense = np.unique(plane, return_inverse=True)  # dense: 0 .. len(ids) - 1
    dense = dense.reshape(plane.shape)
    if ids[0] != 0:  # no background pixel: keep 0 for the background anyway
        ids = np.concatenate([[0], ids])
        dense += 1
    boxes = ndi.find_objects(dense)
    return [(int(ids[i]), box) for i, box in enumerate(boxes, 1) if box is not None]


def labels_to_rois(labels: np.ndarray, *, axes: str | None = None) -> list[roifile.ImagejRoi]:
    """Outline every object of a label image as an ImageJ ROI.

    Parameters
    ----------
    labels : (Y, X) or (Z, Y, X) or (T, Y, X) or (T, Z, Y, X) ndarray of int
        0 = background, 1..N = objects (need not be consecutive). bool and
        whole-valued floats are accepted.
    axes : str, optional
        One letter per dimension: ``"YX"``, ``"ZYX"`` (default for 3-D), ``"TYX"``
        (a time series) or ``"TZYX"`` (default for 4-D).

    Returns
    -------
    list of roifile.ImagejRoi
        One ROI per object and slice, in slice then label order. A 2-D ROI is named
        by its label id zero-padded to at least 4 digits (``"0017"``), so that
        names sort like the ids. In a 3-D stack the name starts with the 1-based
        slice (``"z03-0017"``, ``"t03-0017"``) and ``position`` is the 1-based
        stack index, which ImageJ uses for plain stacks and for hyperstacks with
        one non-channel axis (setting ``z_position`` / ``t_position`` instead
        would make ImageJ drop ``position`` and lose the slice on a plain stack).
        In 4-D the ROIs carry the hyperstack positions ``t_position`` and
        ``z_position`` (``"t02-z03-0017"``). An object in one piece without holes
        is a traced polygon on pixel corners; one in several pieces or with holes
        is a composite ROI (one closed path per outline, even-odd fill). Empty
        labels give an empty list.

    Raises
    ------
    NapariUnetError
        If `labels` is not a 2-D to 4-D image of non-negative integers, `axes` does
        not fit it, or it is wider or taller than :data:`MAX_COORDINATE` pixels.

    Examples
    --------
    >>> labels = np.zeros((4, 5), dtype=np.uint16)
    >>> labels[1:3, 1:4] = 7
    >>> [roi] = labels_to_rois(labels)
    >>> roi.name, roi.coordinates().tolist()
    ('0007', [[1, 1], [4, 1], [4, 3], [1, 3]])
    """
    labels, axes = _validate(labels, axes)
    lead = axes[:-2]
    digits = max(4, len(str(int(labels.max())))) if labels.size else 4
    slice_digits = [len(str(n)) for n in labels.shape[:-2]]
    rois: list[roifile.ImagejRoi] = []
    for index in np.ndindex(labels.shape[:-2]):
        prefix = "".join(
            f"{letter.lower()}{i + 1:0{width}d}-"
            for letter, i, width in zip(lead, index, slice_digits, strict=True)
        )
        plane = labels[index]
        for label_id, (rows, cols) in _plane_objects(plane):
            outlines = _trace_outlines(plane[rows, cols] == label_id)
            roi = _object_roi(outlines, rows.start, cols.start, f"{prefix}{label_id:0{digits}d}")
            if len(lead) == 1:
                roi.position = index[0] + 1
            elif len(lead) == 2:
                position = dict(zip(lead, index, strict=True))
                roi.z_position = position["Z"] + 1
                roi.t_position = position["T"] + 1
            rois.append(roi)
    return rois


def write_roi_zip(
    path: str | os.PathLike[str],
    labels: np.ndarray | None,
    *,
    axes: str | None = None,
    overwrite: bool = False,
    rois: list | None = None,
) -> tuple[Path, int]:
    """Write the objects of a label image as an ImageJ ROI set (``.zip``), atomically.

    The file opens in Fiji/ImageJ with *ROI Manager > More > Open...* (or by
    dropping it on Fiji), over the image the labels belong to.

    Parameters
    ----------
    path : str or path-like
        The ``.zip`` file. A missing folder is created.
    labels : (Y, X) or (Z, Y, X) or (T, Y, X) or (T, Z, Y, X) ndarray of int
        0 = background, 1..N = objects.
    axes : str, optional
        Axis letters, see :func:`labels_to_rois`.
    overwrite : bool, optional
        Replace an existing file. Default False.
    rois : list of roifile.ImagejRoi, optional
        The ROIs of `labels` from :func:`labels_to_rois`, when they were traced
        beforehand (an export of several files checks every input before writing any);
        `labels` and `axes` are then not used.

    Returns
    -------
    path : Path
        The written file.
    n_rois : int
        The number of ROIs in it (one per object and slice).

    Raises
    ------
    NapariUnetError
        If the labels are invalid (see :func:`labels_to_rois`) or hold no objects
        (nothing is written then), `path` is a folder or does not end in ``.zip``,
        the file exists and `overwrite` is False, or the folder cannot be written.

    Examples
    --------
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "cells.zip"
    >>> labels = np.zeros((8, 8), dtype=np.uint16)
    >>> labels[1:3, 1:3], labels[4:7, 2:6] = 1, 2
    >>> write_roi_zip(out, labels)[1]
    2
    >>> [roi.name for roi in roifile.roiread(out)]
    ['0001', '0002']
    """
    path = Path(path).expanduser()
    if path.is_dir():
        raise NapariUnetError(f"{path} is a folder; give a file name ending in .zip.")
    if path.suffix.lower() != ".zip":
        raise NapariUnetError(
            f"{path.name} does not end in .zip: ImageJ opens ROI sets from .zip files; "
            f"use e.g. {path.with_name(path.name + '.zip').name}."
        )
    _check_overwrite(path, overwrite)
    if rois is None:  # else: traced beforehand (labels_to_rois), e.g. for several files
        rois = labels_to_rois(labels, axes=axes)
    if not rois:
        raise NapariUnetError(
            f"the labels (shape {np.shape(labels)}) hold no objects: there are no ROIs to "
            f"write, and {path.name} was not written."
        )
    with atomic_write(path) as tmp:
        roifile.roiwrite(tmp, rois, mode="w")
    return path, len(rois)
