"""The values the options of napari-unet may take, shared by the core, the CLI and the widgets.

Standard library only: the command line and the viewer read these without importing
numpy or torch, and the core modules that check them (:mod:`~napari_unet.core.device`,
:mod:`~napari_unet.core.predict`, :mod:`~napari_unet.core.volume`) share them without
importing one another.
"""

from __future__ import annotations

from napari_unet.core.errors import NapariUnetError

__all__ = ["DEVICE_CHOICES", "PRECISIONS", "SPLIT_METHODS", "STACK_AXES", "resolve_axes"]

#: Where to compute: "auto" picks CUDA, then Apple MPS, then the CPU
#: (see :func:`napari_unet.core.device.select_device`).
DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")

#: Compute precision on the CPU: "auto" (bfloat16 where the CPU computes it natively,
#: else float32), "fp32" or "bf16" (see :func:`napari_unet.core.device.resolve_precision`).
PRECISIONS = ("auto", "fp32", "bf16")

#: How touching objects are split when labelling probabilities: a watershed on the
#: distance transform of the foreground, or one grown from the model's boundary map.
SPLIT_METHODS = ("distance", "boundary")

#: The axes a stack may have (the image's axes without its channel axis): a z-stack
#: (``ZYX``) is labelled in 3D, a time series (``TYX``) frame by frame, a time series of
#: stacks (``TZYX``) in 3D per frame.
STACK_AXES = ("YX", "ZYX", "TYX", "TZYX")


def resolve_axes(axes: str | None, ndim: int) -> str:
    """Return the axes of an image with ``ndim`` axes (its channel axis left out).

    ``axes`` None: a 2D image is ``YX``, a 3D one a z-stack (``ZYX``), a 4D one a time
    series of stacks (``TZYX``); more leading axes than that are read as frames of 2D
    images (``...YX``, labelled slice by slice).

    Raises
    ------
    NapariUnetError
        When ``axes`` is not one of :data:`STACK_AXES` or does not fit ``ndim``.

    Examples
    --------
    >>> resolve_axes(None, 3), resolve_axes("tyx", 3)
    ('ZYX', 'TYX')
    """
    if axes is None:
        return {2: "YX", 3: "ZYX", 4: "TZYX"}.get(ndim, "Q" * (ndim - 2) + "YX")
    text = str(axes).strip().upper()
    if text not in STACK_AXES:
        raise NapariUnetError(
            f"axes must be one of {', '.join(STACK_AXES)} (the image's axes without its "
            f"channels), got {axes!r}."
        )
    if len(text) != ndim:
        raise NapariUnetError(
            f"axes {text!r} names {len(text)} axes, but the image has {ndim} (without its "
            f"channels); give {ndim} letters, e.g. "
            f"{ {2: 'YX', 3: 'ZYX or TYX', 4: 'TZYX'}.get(ndim, 'fewer axes') }."
        )
    return text
