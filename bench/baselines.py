"""The classic, non-learned baseline the trained UNet is judged against.

Otsu threshold + distance-transform watershed (:func:`otsu_watershed`). Run it
over a folder of images and a folder of ground-truth label images::

    python bench/baselines.py --images ../shared/data/dsb2018_stage1_train/images \\
        --gt ../shared/data/dsb2018_stage1_train/masks [--ids-file ids.txt]

It prints :func:`napari_unet.core.metrics.evaluate` as JSON on stdout.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.filters import threshold_otsu

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.io import list_image_files, pair_images_and_labels, read_image, read_labels
from napari_unet.core.metrics import evaluate
from napari_unet.core.split import split_nuclei


def to_grey(image: np.ndarray) -> np.ndarray:
    """(Y, X) float64 image: the mean of R, G, B for colour (alpha dropped), else as is."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] in (3, 4):
        return image[..., :3].astype(np.float64).mean(axis=-1)
    if image.ndim != 2:
        raise NapariUnetError(f"expected a (Y, X) or (Y, X, 3|4) image, got shape {image.shape}")
    return image.astype(np.float64)


def otsu_watershed(
    image: np.ndarray, *, min_size: int = 15, min_distance: int = 4, smooth: float = 1.0
) -> np.ndarray:
    """Segment nuclei with Otsu's threshold and a distance-transform watershed.

    Parameters
    ----------
    image : (Y, X) or (Y, X, 3) or (Y, X, 4) ndarray
        Grey or colour image; colour is averaged to grey.
    min_size : int, optional
        Objects smaller than this many pixels are removed.
    min_distance, smooth : optional
        Passed to :func:`napari_unet.core.split.split_nuclei`.

    Returns
    -------
    (Y, X) ndarray of int32
        Instance labels, 0 = background.

    Notes
    -----
    The fair heuristic for brightfield / H&E images: when the thresholded
    foreground covers more than half the image, the objects are taken to be
    dark on a bright background and the mask is inverted.
    """
    grey = to_grey(image)
    if grey.max() == grey.min():
        return np.zeros(grey.shape, dtype=np.int32)
    threshold = threshold_otsu(grey)
    foreground = grey > threshold
    if foreground.mean() > 0.5:
        foreground = ~foreground
    components, _ = ndi.label(foreground, structure=np.ones((3, 3), bool))
    foreground = (np.bincount(components.ravel()) >= min_size)[components] & foreground
    return split_nuclei(foreground, min_size=min_size, min_distance=min_distance, smooth=smooth)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", required=True, type=Path, help="folder of images")
    parser.add_argument("--gt", required=True, type=Path, help="folder of ground-truth labels")
    parser.add_argument("--ids-file", type=Path, help="text file: one image stem per line to use")
    args = parser.parse_args(argv)
    try:
        pairs, _ = pair_images_and_labels(list_image_files(args.images), list_image_files(args.gt))
        if args.ids_file is not None:
            wanted = {line.strip() for line in args.ids_file.read_text().splitlines()}
            wanted.discard("")
            pairs = [(img, gt) for img, gt in pairs if img.stem in wanted]
            if not pairs:
                raise NapariUnetError(f"no image in {args.images} is listed in {args.ids_file}")
        start = time.perf_counter()
        gts, preds, names = [], [], []
        for image_path, gt_path in pairs:
            preds.append(otsu_watershed(read_image(image_path)))
            gts.append(read_labels(gt_path))
            names.append(image_path.stem)
        result = evaluate(gts, preds, names)
    except NapariUnetError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    result["method"] = "otsu_watershed"
    result["seconds"] = round(time.perf_counter() - start, 2)
    json.dump(result, sys.stdout, indent=1)
    print()
    return 0


if __name__ == "__main__":
    sys.exit(main())
