"""Speed of the measurements per object on a 2048x2048 image with about 1,000 nuclei.

Target (issue 20): ``measure_labels`` (every column: area, centroid, bounding box,
equivalent diameter, eccentricity, solidity, perimeter, mean / max / min intensity) on
1,000 objects of a 2048x2048 image in under 1 s on a 2-core CPU, median of the runs.
The label image and its image are real DSB2018 masks and images tiled into 2048x2048
(``_common.dsb_tiled``); without the shared data, synthetic touching discs on noise.
Also timed: an RGB image (3 intensity channels) and calibrated columns. Prints a
table and writes bench/results/measure_speed.json.

Usage: python bench/measure_speed.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from _common import dsb_tiled, loadavg, machine, median, save

TARGET_S = 1.0


def data() -> tuple[np.ndarray, np.ndarray, str]:
    tiled = dsb_tiled(2048, 256, 1000)
    if tiled is not None:
        return tiled
    from split_speed import touching_discs

    labels = touching_discs((2048, 2048), 1000)
    rng = np.random.default_rng(0)
    image = (rng.random(labels.shape) * 50 + (labels > 0) * 150).astype(np.uint8)
    return labels, image, "2048x2048, synthetic touching discs (r 9-16 px) on noise"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    from napari_unet.core.measure import measure_labels

    labels, image, what = data()
    n = len(np.unique(labels)) - 1
    rgb = np.stack([image, image // 2, 255 - image], axis=-1)
    load_start = loadavg()
    cases = {
        "grey image": lambda: measure_labels(labels, image),
        "grey image, calibrated (0.3 um)": lambda: measure_labels(
            labels, image, scale=(0.3, 0.3), unit="um"
        ),
        "RGB image (3 channels)": lambda: measure_labels(labels, rgb),
        "labels only (no intensity)": lambda: measure_labels(labels),
    }
    measure_labels(labels[:256, :256], image[:256, :256])  # imports, first-call costs
    results = {}
    print(f"{what}: {n} objects; {args.repeats} runs each")
    print(f"{'case':34s} {'median s':>9s} {'min s':>7s} {'rows':>6s}")
    for name, run in cases.items():
        times = []
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            table = run()
            times.append(time.perf_counter() - t0)
        rows = len(table["label"])
        assert rows == n, (rows, n)
        results[name] = {"median_s": median(times), "times_s": times, "rows": rows}
        print(f"{name:34s} {median(times):9.3f} {min(times):7.3f} {rows:6d}")
    value = results["grey image"]["median_s"]
    print(
        f"target: {n} objects in under {TARGET_S} s (grey image): {value:.3f} s -> "
        f"{'met' if value < TARGET_S else 'NOT met'}"
    )
    save(
        "measure_speed",
        {
            "what": what,
            "objects": n,
            "shape": list(labels.shape),
            "repeats": args.repeats,
            "cases": results,
            "target_s": TARGET_S,
            "value_s": value,
            "passed": value < TARGET_S,
            "machine": machine(),
            "loadavg_start": load_start,
        },
    )


if __name__ == "__main__":
    main()
