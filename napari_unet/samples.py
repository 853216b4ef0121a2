"""The small nuclei images shipped with napari-unet, with their ground truth.

Qt-free: the command line (``napari-unet demo``), the tests and the napari sample-data
menu (:mod:`napari_unet._sample_data`) all load them from here. See
``napari_unet/sample_data/SOURCE.md`` for their origin (DSB2018 / BBBC038v1, CC0).
"""

from __future__ import annotations

from importlib import resources

import numpy as np

#: Names of the shipped samples, in menu order: four greyscale fluorescence images
#: (256 x 256) and two RGB stained-tissue images (256 x 320 x 3).
SAMPLE_NAMES: tuple[str, ...] = (
    "fluo_dense",
    "fluo_crowded",
    "fluo_mixed",
    "fluo_small",
    "he_tissue",
    "he_cells",
)


def load_sample(name: str) -> tuple[np.ndarray, np.ndarray]:
    """Load one shipped sample image and its instance labels.

    Parameters
    ----------
    name : str
        One of :data:`SAMPLE_NAMES`.

    Returns
    -------
    image : (Y, X) or (Y, X, 3) ndarray of uint8
        Greyscale fluorescence or RGB stained image.
    labels : (Y, X) ndarray of uint16
        Ground truth: 0 = background, 1..N = one nucleus each.

    Raises
    ------
    ValueError
        If `name` is not a shipped sample.

    Examples
    --------
    >>> image, labels = load_sample("fluo_dense")
    >>> image.shape, labels.dtype
    ((256, 256), dtype('uint16'))
    """
    import tifffile

    if name not in SAMPLE_NAMES:
        raise ValueError(f"Unknown sample {name!r}; choose one of: {', '.join(SAMPLE_NAMES)}.")
    folder = resources.files("napari_unet") / "sample_data"
    with (folder / f"{name}.tif").open("rb") as fh:
        image = tifffile.imread(fh)
    with (folder / f"{name}_labels.tif").open("rb") as fh:
        labels = tifffile.imread(fh)
    return image, labels


def load_samples(
    names: tuple[str, ...] | list[str] | None = None,
) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Load shipped sample images with their instance labels.

    Parameters
    ----------
    names : sequence of str, optional
        Which samples (see :data:`SAMPLE_NAMES`); all of them by default.

    Returns
    -------
    list of (name, image, labels)
        `image` is (Y, X) uint8 (fluorescence) or (Y, X, 3) uint8 (RGB); `labels` is
        (Y, X) uint16 with 0 = background and 1..N = nuclei.

    Examples
    --------
    >>> samples = load_samples()
    >>> [name for name, image, labels in samples][:2]
    ['fluo_dense', 'fluo_crowded']
    """
    return [(name, *load_sample(name)) for name in (names or SAMPLE_NAMES)]
