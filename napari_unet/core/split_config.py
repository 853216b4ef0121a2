"""The settings of splitting touching nuclei: :class:`SplitConfig`, and for a nucleus size.

numpy only (no scipy), so that the command line reads the defaults for its help without
importing the split itself (:mod:`napari_unet.core.split`, which re-exports these;
``split_nuclei`` below is :func:`napari_unet.core.split.split_nuclei`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from napari_unet.core.errors import NapariUnetError

__all__ = [
    "MAX_SMOOTH",
    "REFERENCE_DIAMETER",
    "SplitConfig",
    "check_split_params",
    "split_settings",
]

MAX_SMOOTH = 100.0
"""Widest smoothing of the distance map (sigma, pixels); the default is 1."""


def check_split_params(min_distance: int, h: float | None, smooth: float, min_size: int) -> None:
    """Raise :class:`NapariUnetError` for a split setting out of range."""
    if int(min_distance) != min_distance or min_distance < 1:
        raise NapariUnetError(f"min_distance must be a whole number >= 1, got {min_distance!r}.")
    if h is not None and not (np.isfinite(h) and h > 0):
        raise NapariUnetError(f"h must be a positive number (or None), got {h!r}.")
    if not (np.isfinite(smooth) and 0 <= smooth <= MAX_SMOOTH):
        raise NapariUnetError(
            f"smooth must be from 0 (no smoothing) to {MAX_SMOOTH:g} pixels, got {smooth!r}."
        )
    if int(min_size) != min_size or min_size < 0:
        raise NapariUnetError(f"min_size must be a whole number >= 0, got {min_size!r}.")


#: The nucleus diameter (pixels) that :func:`.split_nuclei`'s defaults suit.
REFERENCE_DIAMETER = 20.0


def split_settings(diameter: float) -> dict[str, float | int]:
    """Return :func:`.split_nuclei` settings for nuclei about ``diameter`` pixels across.

    The defaults of :func:`.split_nuclei` suit nuclei of about 20 pixels
    (:data:`REFERENCE_DIAMETER`); for a diameter ``d`` the distances scale by
    ``d / 20`` (``min_distance``, ``smooth``), the areas by its square
    (``min_size``), and the split depth is ``h = 0.07 d`` (h-maxima markers).

    Measured on ground-truth masks with touching nuclei merged (F1 of the split
    against the true nuclei, default settings -> these): Fluo-N2DH-GOWT1, 60 px,
    0.944 -> 0.987; MICCAI H&E, 10-30 px, 0.911 -> 0.967; 30 DSB2018 test images,
    0.951 -> 0.959; synthetic nuclei of 10-90 px, 0.995 -> 0.987.

    Parameters
    ----------
    diameter : float
        Typical nucleus diameter in pixels (see :mod:`napari_unet.core.size`).

    Returns
    -------
    dict
        ``min_distance``, ``h``, ``smooth`` and ``min_size`` for :func:`.split_nuclei`
        (``min_distance`` serves when ``h`` is set to None).

    Raises
    ------
    NapariUnetError
        When ``diameter`` is not a positive number.

    Examples
    --------
    >>> split_settings(80)
    {'min_distance': 16, 'h': 5.6, 'smooth': 4.0, 'min_size': 160}
    """
    if isinstance(diameter, bool) or not (
        isinstance(diameter, (int, float, np.number)) and np.isfinite(diameter) and diameter > 0
    ):
        raise NapariUnetError(f"diameter must be a positive number of pixels, got {diameter!r}.")
    s = float(diameter) / REFERENCE_DIAMETER
    return {
        "min_distance": max(1, int(round(4 * s))),
        "h": round(max(0.5, 0.07 * float(diameter)), 3),
        "smooth": round(min(MAX_SMOOTH, 1.0 * s), 3),
        "min_size": max(1, int(round(10 * s * s))),
    }


@dataclass
class SplitConfig:
    """Settings of Split nuclei (the widget) and ``napari-unet split``, in pixels.

    The defaults are :func:`.split_nuclei`'s (nuclei of about 20 pixels, see
    :data:`REFERENCE_DIAMETER`); :meth:`for_diameter` gives settings for other sizes.
    :func:`napari_unet.core.volume.split_image` splits with them.

    Parameters
    ----------
    threshold : float
        Foreground probability above which a pixel is a nucleus (probability input).
    min_distance, h, smooth, fill_holes
        As :func:`.split_nuclei` (distances in pixels).
    min_size : int
        Smallest object: pixels, or voxels when a z-stack is split in 3D.

    Raises
    ------
    NapariUnetError
        For a setting out of range.
    """

    threshold: float = 0.5
    min_distance: int = 4
    h: float | None = None
    smooth: float = 1.0
    min_size: int = 10
    fill_holes: bool = True

    def __post_init__(self) -> None:
        """Check the settings."""
        t = self.threshold
        if isinstance(t, bool) or not (isinstance(t, (int, float, np.number)) and 0 < t < 1):
            raise NapariUnetError(
                f"threshold must be between 0 and 1 (a probability), got {self.threshold!r}."
            )
        check_split_params(self.min_distance, self.h, self.smooth, self.min_size)

    @classmethod
    def for_diameter(cls, diameter: float, **given: Any) -> SplitConfig:
        """Return the settings for nuclei about ``diameter`` pixels across (:func:`split_settings`).

        ``given`` settings win; a ``min_distance`` given without ``h`` means markers by
        distance (``h=None``).

        Examples
        --------
        >>> SplitConfig.for_diameter(80, min_distance=10).split_kwargs()
        {'min_distance': 10, 'h': None, 'smooth': 4.0, 'min_size': 160, 'fill_holes': True}
        """
        settings: dict[str, Any] = split_settings(diameter)
        if "min_distance" in given and "h" not in given:
            settings["h"] = None  # markers by distance, as asked
        return cls(**{**settings, **given})

    def split_kwargs(self) -> dict[str, Any]:
        """Return the keyword arguments of :func:`.split_nuclei` (all but ``threshold``)."""
        kwargs = asdict(self)
        del kwargs["threshold"]
        return kwargs
