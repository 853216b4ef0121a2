"""napari sample-data contributions: File > Open Sample > napari-unet.

Each entry opens one shipped DSB2018 image with its ground-truth labels (see
:mod:`napari_unet.samples`). The labels layer is called ``<name>_ground_truth`` so that
it never collides with the ``<name>_labels`` layer that the Predict widget adds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from napari_unet.samples import load_sample

LayerData = tuple[Any, dict[str, Any], str]


def sample_layers(name: str) -> list[LayerData]:
    """Return the image and ground-truth layer data of one shipped sample.

    Parameters
    ----------
    name : str
        One of :data:`napari_unet.samples.SAMPLE_NAMES`.

    Returns
    -------
    list of (data, kwargs, layer_type)
        An ``image`` layer (RGB for the stained samples) and a ``labels`` layer.
    """
    image, labels = load_sample(name)
    rgb = image.ndim == 3 and image.shape[-1] in (3, 4)
    image_kwargs: dict[str, Any] = {"name": name, "rgb": rgb}
    if not rgb:
        image_kwargs["colormap"] = "gray"
    return [
        (image, image_kwargs, "image"),
        (labels, {"name": f"{name}_ground_truth", "opacity": 0.5}, "labels"),
    ]


def fluo_dense() -> list[LayerData]:
    """Fluorescence nuclei, many touching (256 x 256, 57 nuclei)."""
    return sample_layers("fluo_dense")


def fluo_crowded() -> list[LayerData]:
    """Fluorescence nuclei, a crowded field (256 x 256, 79 nuclei)."""
    return sample_layers("fluo_crowded")


def fluo_mixed() -> list[LayerData]:
    """Fluorescence nuclei of mixed size and brightness (256 x 256, 56 nuclei)."""
    return sample_layers("fluo_mixed")


def fluo_small() -> list[LayerData]:
    """Small fluorescence nuclei (256 x 256, 60 nuclei)."""
    return sample_layers("fluo_small")


def he_tissue() -> list[LayerData]:
    """Stained tissue section, RGB (256 x 320 x 3, 82 nuclei)."""
    return sample_layers("he_tissue")


def he_cells() -> list[LayerData]:
    """Stained cells, RGB (256 x 320 x 3, 81 nuclei)."""
    return sample_layers("he_cells")


def nuclei_zstack() -> list[LayerData]:
    """Synthetic fluorescence nuclei in a z-stack (32 x 256 x 256, 1.5 um steps, 0.5 um pixels).

    Made by :func:`napari_unet.samples.synthetic_nuclei_stack` (no file shipped): 60
    nuclei of about 10 um, half of them touching, with their true 3D labels.
    """
    from napari_unet.samples import synthetic_nuclei_stack

    image, labels, _ = synthetic_nuclei_stack((32, 256, 256), z_step=3.0, n=60, seed=7)
    geometry = {
        "scale": (1.5, 0.5, 0.5),
        "units": ("um", "um", "um"),
        "axis_labels": ("z", "y", "x"),
    }
    image = (np.clip(image, 0, None) * 2000).astype(np.uint16)
    return [
        (image, {"name": "nuclei_zstack", "colormap": "gray", **geometry}, "image"),
        (
            labels.astype(np.uint16),
            {"name": "nuclei_zstack_ground_truth", "opacity": 0.5, "visible": False, **geometry},
            "labels",
        ),
    ]
