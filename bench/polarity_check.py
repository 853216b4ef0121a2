"""Does ``polarity="auto"`` tell bright-background images from dark-background ones on DSB2018?

For every image of ``../shared/data/dsb2018_stage1_train`` this computes what
:class:`napari_unet.core.data.Normalisation` decides on: the median of each channel, scaled so
that its 1st and 99.8th percentiles map to 0 and 1, averaged over channels (an image is
inverted when this is above 0.5). It prints the range of that value per kind of image
(fluorescence, grey brightfield, colour tissue; kinds as in bench/dsb_unet_vs_otsu.py) and how
many images of each kind get inverted.

Usage: python bench/polarity_check.py [--data ../shared/data]
Writes bench/results/polarity_check.json.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        default=os.environ.get("NAPARI_UNET_DATA", str(HERE.parent.parent / "shared" / "data")),
    )
    args = ap.parse_args()
    sys.path.insert(0, str(HERE))
    from dsb_unet_vs_otsu import image_kind

    from napari_unet.core.data import Normalisation, channels_first
    from napari_unet.core.io import read_image

    root = Path(args.data) / "dsb2018_stage1_train"
    stats = json.loads((root / "per_image_stats.json").read_text())
    norm = Normalisation(polarity="auto")
    values: dict[str, list[float]] = {}
    inverted: dict[str, int] = {}
    for s in stats:
        path = root / "images" / f"{s['id']}.png"
        img = read_image(path)
        x = channels_first(img, -1 if img.ndim == 3 else None).astype(np.float32)
        flat = x.reshape(x.shape[0], -1)
        lo, hi = np.percentile(flat, [norm.low, norm.high], axis=1)
        position = (np.median(flat, axis=1) - lo) / np.maximum(hi - lo, 1e-6)
        kind = image_kind(s, path)
        values.setdefault(kind, []).append(float(np.mean(position)))
        lo_n, hi_n = norm.ranges(x)
        inverted[kind] = inverted.get(kind, 0) + int(np.all(lo_n > hi_n))
    report = {}
    print(f"{'kind':18s} {'images':>6s} {'min':>6s} {'median':>7s} {'max':>6s} {'inverted':>9s}")
    for kind in sorted(values):
        v = np.array(values[kind])
        report[kind] = {
            "images": int(v.size),
            "min": float(v.min()),
            "median": float(np.median(v)),
            "max": float(v.max()),
            "inverted": inverted[kind],
        }
        r = report[kind]
        print(
            f"{kind:18s} {r['images']:6d} {r['min']:6.3f} {r['median']:7.3f} {r['max']:6.3f} "
            f"{r['inverted']:9d}"
        )
    out = HERE / "results" / "polarity_check.json"
    out.write_text(json.dumps(report, indent=2))
    print(f"saved {out}")


if __name__ == "__main__":
    main()
