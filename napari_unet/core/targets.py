"""Training targets from what users paint.

A label image as napari's Labels layer holds it (``0`` background, each object
its own positive value) becomes:

* ``foreground``: 1 inside every object;
* ``boundary``: 1 on a thin band along every object's edge, including the
  interface between two touching objects (what splitting needs);
* ``valid``: 1 where the loss counts (0 on pixels the user did not annotate);
* optionally ``weight``: the UNet paper's border weights
  ``w0 * exp(-(d1 + d2)**2 / (2 * sigma**2))`` on background pixels between
  objects, which makes the gaps between touching cells count more.

Sparse annotation convention
----------------------------
With ``sparse=True`` a user may label part of an image: ``0`` means *not
annotated* (ignored by the loss), ``1`` means *background* (painted on purpose)
and every value ``>= 2`` is one object. With ``sparse=False`` (the default,
fully annotated images) ``0`` is background.

Binary masks (one value besides 0, e.g. 0/1 or 0/255 or bool) carry no
information on where touching objects meet, so their boundary channel is
ignored by the loss (``boundary_valid`` is 0) unless the mask has a single
connected object per value.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_unet.core.errors import NapariUnetError

# scipy.ndimage is imported inside the functions that use it: it takes 0.3-0.9 s to
# import, and the widgets import this module (through core.train) when they open.

__all__ = [
    "Targets",
    "make_targets",
    "is_binary_mask",
    "check_labels",
    "border_weights",
    "interfaces",
]


@dataclass
class Targets:
    """Per-pixel training targets for one 2D label image.

    Attributes
    ----------
    foreground : (M, N) ndarray of uint8
    boundary : (M, N) ndarray of uint8
    valid : (M, N) ndarray of uint8
        1 where the loss counts.
    boundary_valid : bool
        False for binary masks: the boundary channel is not supervised there.
    weight : (M, N) ndarray of float32 or None
        Border weights (>= 1), or None when not requested.
    boundary_weight : (M, N) ndarray of float32 or None
        Extra loss weights (>= 1) of the boundary channel: ``1 + interface_weight``
        near where two objects touch, 1 elsewhere; None when not requested.
    instances : (M, N) ndarray of int or None
        The objects as instance labels (after the sparse/binary conventions).
    boundary_width : int
        Width of the boundary band, in pixels.
    contact_gap : int
        Width of the gap left in ``foreground`` on each side of where two objects touch.
    """

    foreground: np.ndarray
    boundary: np.ndarray
    valid: np.ndarray
    boundary_valid: bool
    weight: np.ndarray | None = None
    instances: np.ndarray | None = None
    boundary_weight: np.ndarray | None = None
    boundary_width: int = 1
    contact_gap: int = 0


def check_labels(labels: np.ndarray, *, name: str = "labels") -> np.ndarray:
    """Validate a label image and return it as a signed or unsigned integer array.

    Parameters
    ----------
    labels : ndarray
        Integer, bool, or float with whole non-negative values.
    name : str
        Used in error messages.

    Returns
    -------
    ndarray of int
        The labels (bool and integral floats converted).

    Raises
    ------
    NapariUnetError
        Float labels with fractions, negative values, or NaN.
    """
    labels = np.asarray(labels)
    if labels.dtype == bool:
        return labels.astype(np.uint8)
    if labels.dtype.kind == "f":
        if not np.all(np.isfinite(labels)) or np.any(labels != np.round(labels)):
            raise NapariUnetError(
                f"{name} has floating-point values that are not whole numbers; a label image "
                "must hold integers (0 = background, 1, 2, ... = objects). Convert it to a "
                "Labels layer or an integer TIFF."
            )
        labels = labels.astype(np.int64)
    if labels.dtype.kind not in "iu":
        raise NapariUnetError(f"{name} must be an integer label image, got dtype {labels.dtype}.")
    if labels.dtype.kind == "i" and labels.size and labels.min() < 0:
        raise NapariUnetError(
            f"{name} has negative values (min {labels.min()}); labels must be >= 0 "
            "(0 = background, 1, 2, ... = objects)."
        )
    return labels


def is_binary_mask(labels: np.ndarray) -> bool:
    """Return True when ``labels`` holds at most one value besides 0."""
    nz = labels[labels != 0]
    return nz.size == 0 or bool(np.all(nz == nz.flat[0]))


def _object_labels(labels: np.ndarray, sparse: bool) -> tuple[np.ndarray, np.ndarray, bool]:
    """Return (instance labels, valid mask, boundary supervised) per the conventions."""
    from scipy import ndimage as ndi

    if sparse:
        valid = labels != 0
        inst = np.where(labels >= 2, labels, 0)
        binary = is_binary_mask(inst)
    else:
        valid = np.ones(labels.shape, dtype=bool)
        inst = labels
        binary = is_binary_mask(inst)
    if binary and inst.any():
        # one value: objects are its connected components; where they touch is unknown
        inst, n = ndi.label(inst != 0)
        return inst, valid, n <= 1
    return inst, valid, True


def _edge_band(inst: np.ndarray, width: int, objects_only: bool) -> np.ndarray:
    """Object pixels whose 4-neighbourhood holds another value, grown to ``width``.

    With ``objects_only`` the other value must be another object (not background).
    The image border counts as more of the same pixel.
    """
    from scipy import ndimage as ndi

    b = np.zeros(inst.shape, dtype=bool)
    pad = np.pad(inst, 1, mode="edge")
    c = pad[1:-1, 1:-1]
    for sl in (
        (slice(None, -2), slice(1, -1)),
        (slice(2, None), slice(1, -1)),
        (slice(1, -1), slice(None, -2)),
        (slice(1, -1), slice(2, None)),
    ):
        other = pad[sl]
        b |= ((other != c) & (other != 0)) if objects_only else (other != c)
    b &= inst != 0
    if width > 1 and b.any():
        b = ndi.binary_dilation(b, iterations=width - 1) & (inst != 0)
    return b


def _boundary(inst: np.ndarray, width: int = 1) -> np.ndarray:
    """Pixels of an object whose 4-neighbourhood holds another value (band of ``width``)."""
    return _edge_band(inst, width, objects_only=False)


def _foreground(inst: np.ndarray, contact_gap: int = 0, touching_known: bool = True) -> np.ndarray:
    """Object pixels, less ``contact_gap`` pixels each side of where two objects touch.

    The gap is left only when the labels say where objects touch (``touching_known``:
    not for binary masks). :func:`make_targets` and the zoomed patches of
    :class:`napari_unet.core.data.PatchSampler` both build the foreground target here.
    """
    fg = inst != 0
    if contact_gap > 0 and touching_known and fg.any():
        fg &= ~interfaces(inst, int(contact_gap))
    return fg


def interfaces(inst: np.ndarray, width: int = 1) -> np.ndarray:
    """Object pixels within ``width`` pixels of a pixel of *another* object (not background).

    Where two objects touch; the band covers both sides. ``width`` 1 gives the two
    pixel rows that meet (4-neighbourhood), each further step grows the band by one
    pixel into each object.
    """
    return _edge_band(inst, width, objects_only=True)


def border_weights(inst: np.ndarray, w0: float = 10.0, sigma: float = 5.0) -> np.ndarray:
    """UNet-paper border weights on background pixels between objects.

    ``w(x) = 1 + w0 * exp(-(d1(x) + d2(x))**2 / (2 * sigma**2))`` on background,
    where d1, d2 are the distances to the nearest and second-nearest object;
    1 inside objects. (The paper's class-balancing term is left to the loss.)
    Distances are computed per object inside its bounding box grown by
    ``3 * sigma``, beyond which the weight is below ``w0 * 1e-4``.

    Parameters
    ----------
    inst : (M, N) ndarray of int
        Instance labels.
    w0, sigma : float
        The paper uses 10 and 5 pixels.

    Returns
    -------
    (M, N) ndarray of float32
    """
    from scipy import ndimage as ndi

    shape = inst.shape
    d1 = np.full(shape, np.inf, dtype=np.float32)
    d2 = np.full(shape, np.inf, dtype=np.float32)
    reach = int(np.ceil(3 * sigma))
    for idx, sl in enumerate(ndi.find_objects(inst), start=1):
        if sl is None:
            continue
        y0 = max(sl[0].start - reach, 0)
        y1 = min(sl[0].stop + reach, shape[0])
        x0 = max(sl[1].start - reach, 0)
        x1 = min(sl[1].stop + reach, shape[1])
        win = inst[y0:y1, x0:x1] == idx
        d = ndi.distance_transform_edt(~win).astype(np.float32)
        a = d1[y0:y1, x0:x1]
        b = d2[y0:y1, x0:x1]
        closer = d < a
        b[:] = np.where(closer, a, np.minimum(b, d))
        a[:] = np.minimum(a, d)
    w = 1.0 + w0 * np.exp(-((d1 + d2) ** 2) / (2 * sigma**2))
    w[inst != 0] = 1.0
    return w.astype(np.float32)


def make_targets(
    labels: np.ndarray,
    *,
    sparse: bool = False,
    boundary_width: int = 1,
    border_weight: float = 0.0,
    border_sigma: float = 5.0,
    interface_weight: float = 0.0,
    contact_gap: int = 0,
) -> Targets:
    """Derive training targets from one 2D label image.

    Parameters
    ----------
    labels : (M, N) ndarray of int
        Instance labels, a binary mask, or a sparse annotation (see module doc).
    sparse : bool
        Use the sparse convention (0 = not annotated, 1 = background, >= 2 objects).
    boundary_width : int
        Width in pixels of the boundary band inside each object.
    border_weight : float
        ``w0`` of the UNet paper's border weights; 0 disables them.
    border_sigma : float
        ``sigma`` of the border weights, in pixels.
    interface_weight : float
        Extra weight of the boundary channel's loss where two objects touch (the two
        pixels either side of the interface): their weight is ``1 + interface_weight``.
        Those pixels are a few percent of the boundary band, yet they are what
        splitting touching nuclei needs. 0 disables it.
    contact_gap : int
        Where two objects touch, leave this many pixels on each side out of
        ``foreground`` (the UNet paper's separation border): touching objects are then
        apart in the foreground target itself, so a network trained on it draws a gap
        between them, and the split finds a waist there. 0 (off) keeps objects whole.
        Binary masks, which do not say where objects touch, get no gap.

    Returns
    -------
    Targets

    Examples
    --------
    >>> import numpy as np
    >>> lab = np.zeros((6, 8), int); lab[1:5, 1:4] = 1; lab[1:5, 4:7] = 2
    >>> t = make_targets(lab)
    >>> int(t.foreground.sum()), bool(t.boundary[2, 3]), bool(t.boundary[2, 4])
    (24, True, True)
    """
    labels = check_labels(labels)
    if labels.ndim != 2:
        raise NapariUnetError(f"make_targets expects a 2D label image, got shape {labels.shape}.")
    inst, valid, boundary_valid = _object_labels(labels, sparse)
    fg = inst != 0
    bnd = _boundary(inst, boundary_width) if fg.any() else np.zeros_like(fg)
    weight = None
    if border_weight > 0:
        weight = (
            border_weights(inst, border_weight, border_sigma)
            if fg.any()
            else (np.ones(labels.shape, np.float32))
        )
    boundary_weight = None
    if interface_weight > 0:
        boundary_weight = np.ones(labels.shape, np.float32)
        if fg.any() and boundary_valid:
            boundary_weight[interfaces(inst, max(boundary_width, 2))] += np.float32(
                interface_weight
            )
    return Targets(
        foreground=_foreground(inst, contact_gap, boundary_valid).astype(np.uint8),
        boundary=bnd.astype(np.uint8),
        valid=valid.astype(np.uint8),
        boundary_valid=boundary_valid,
        weight=weight,
        instances=inst,
        boundary_weight=boundary_weight,
        boundary_width=int(boundary_width),
        contact_gap=int(contact_gap),
    )
