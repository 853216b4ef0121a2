"""Speed of splitting and object matching on a 2048x2048 mask with about 1,000 nuclei.

Issue 5 target: split_nuclei <= 1 s and no slower than 1.1x the plain scikit-image recipe
(distance transform, peak_local_max, watershed) on the same mask. Both run side by side in
this process; medians over --repeats runs. Prints a table and writes
bench/results/split_speed.json.

Usage: python bench/split_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi
from skimage.feature import peak_local_max
from skimage.segmentation import watershed

from napari_unet.core.metrics import match_objects
from napari_unet.core.split import split_nuclei

HERE = Path(__file__).resolve().parent


def touching_discs(shape, n, seed=0, radius=(9, 16)):
    """Clusters of 1-3 overlapping discs as instance labels."""
    rng = np.random.default_rng(seed)
    labels = np.zeros(shape, np.int32)
    k = 0
    while k < n:
        centre = rng.uniform(30, np.array(shape) - 30)
        r = rng.uniform(*radius)
        for _ in range(rng.integers(1, 4)):
            k += 1
            y0, x0 = (int(c - r - 1) for c in centre)
            y1, x1 = (int(c + r + 2) for c in centre)
            y0, x0, y1, x1 = max(y0, 0), max(x0, 0), min(y1, shape[0]), min(x1, shape[1])
            yy, xx = np.mgrid[y0:y1, x0:x1]
            disc = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 < r**2
            win = labels[y0:y1, x0:x1]
            win[disc & (win == 0)] = k
            r2 = rng.uniform(*radius)
            angle = rng.uniform(0, 2 * np.pi)
            centre = centre + (r + r2) * 0.8 * np.array([np.sin(angle), np.cos(angle)])
            r = r2
    return labels


def recipe(mask):
    dist = ndi.distance_transform_edt(mask)
    coords = peak_local_max(dist, min_distance=4, labels=mask)
    peaks = np.zeros(mask.shape, bool)
    peaks[tuple(coords.T)] = True
    return watershed(-dist, ndi.label(peaks)[0], mask=mask)


def median_time(fn, repeats):
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    truth = touching_discs((2048, 2048), 1000)
    mask = truth > 0
    ours = median_time(lambda: split_nuclei(mask), args.repeats)
    theirs = median_time(lambda: recipe(mask), args.repeats)
    pred = split_nuclei(mask)
    t_match = median_time(lambda: match_objects(truth, pred), args.repeats)
    f1 = match_objects(truth, pred).f1(0.5)
    result = {
        "mask": "2048x2048, 1000 touching discs (r 9-16 px)",
        "n_objects": int(len(np.unique(truth)) - 1),
        "foreground_fraction": round(float(mask.mean()), 3),
        "repeats": args.repeats,
        "split_nuclei_s": round(ours, 3),
        "skimage_recipe_s": round(theirs, 3),
        "ratio": round(ours / theirs, 3),
        "split_f1_vs_truth": round(float(f1), 3),
        "match_objects_s": round(t_match, 3),
        "targets": {"split_nuclei_s": 1.0, "ratio": 1.1},
    }
    for k, v in result.items():
        print(f"{k:22s} {v}")
    out = HERE / "results" / "split_speed.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
