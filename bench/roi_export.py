"""Speed of the ImageJ ROI export on a 2048x2048 label image with about 1,000 nuclei.

Target: ``write_roi_zip`` (trace every object, write the .zip atomically) in under 2 s on
a 2-core CPU. The label image is built deterministically from real DSB2018 masks (greyscale
256x256 images, in sorted id order, tiled 8 x 8 and relabelled until 1,000 nuclei are
placed); without the shared data, from synthetic touching discs. Every ROI is read back
with roifile and filled as ImageJ fills it (pixel centres inside, even-odd) to check that
it gives back its object (IoU). Prints a table and writes bench/results/roi_export.json.

Usage: python bench/roi_export.py [--repeats 5] [--synthetic]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
from _common import dsb_tiled, loadavg, machine, median, save

SIZE, TILE, TARGET_OBJECTS = 2048, 256, 1000


def dsb_tiled_labels() -> tuple[np.ndarray, str] | None:
    """Real DSB2018 masks tiled into a SIZE x SIZE label image, or None without the data."""
    tiled = dsb_tiled(SIZE, TILE, TARGET_OBJECTS)
    return None if tiled is None else (tiled[0], tiled[2])


def synthetic() -> tuple[np.ndarray, str]:
    """Clusters of 1-3 touching discs (the split benchmark's mask)."""
    from split_speed import touching_discs

    labels = touching_discs((SIZE, SIZE), TARGET_OBJECTS)
    return labels, f"{SIZE}x{SIZE}, synthetic touching discs (r 9-16 px)"


def fill_iou(roi, labels: np.ndarray) -> float:
    """IoU of an ROI filled as ImageJ fills it with its object, in the ROI's box."""
    from skimage.draw import polygon

    paths = [np.asarray(p, dtype=float) for p in roi.coordinates(multi=True)]
    every = np.concatenate(paths)
    x0, y0 = (int(v) for v in every.min(axis=0))
    x1, y1 = (int(v) for v in every.max(axis=0))
    shape = (y1 - y0, x1 - x0)
    filled = np.zeros(shape, dtype=bool)
    for xy in paths:
        rr, cc = polygon(xy[:, 1] - y0 - 0.5, xy[:, 0] - x0 - 0.5, shape)
        part = np.zeros(shape, dtype=bool)
        part[rr, cc] = True
        filled ^= part
    label_id = int(roi.name.split("-")[-1])
    obj = labels == label_id
    inside = obj[y0:y1, x0:x1]
    outside = int(obj.sum()) - int(inside.sum())  # object pixels the box misses
    union = int((filled | inside).sum()) + outside
    return float((filled & inside).sum()) / union


def main() -> None:
    import roifile

    from napari_unet.core.rois import labels_to_rois, write_roi_zip

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--synthetic", action="store_true", help="do not use the DSB2018 masks")
    args = ap.parse_args()
    made = None if args.synthetic else dsb_tiled_labels()
    labels, source = made if made is not None else synthetic()
    n_objects = int(len(np.unique(labels)) - 1)
    load_start = loadavg()

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "rois.zip"
        write_roi_zip(out, labels, overwrite=True)  # warm-up (imports, caches)
        write_times, trace_times = [], []
        for _ in range(args.repeats):
            t = time.perf_counter()
            _, n_rois = write_roi_zip(out, labels, overwrite=True)
            write_times.append(time.perf_counter() - t)
            t = time.perf_counter()
            labels_to_rois(labels)
            trace_times.append(time.perf_counter() - t)
        size_kib = out.stat().st_size / 1024
        rois = roifile.roiread(out)

    ious = [fill_iou(roi, labels) for roi in rois]
    names_ok = sorted(int(r.name) for r in rois) == [int(i) for i in np.unique(labels) if i]
    result = {
        "labels": source,
        "shape": list(labels.shape),
        "n_objects": n_objects,
        "n_rois": int(n_rois),
        "n_rois_read_back": len(rois),
        "names_match_label_ids": bool(names_ok),
        "n_composite_rois": int(sum(r.composite for r in rois)),
        "repeats": args.repeats,
        "write_roi_zip_s": round(median(write_times), 3),
        "write_roi_zip_s_all": [round(t, 3) for t in write_times],
        "labels_to_rois_s": round(median(trace_times), 3),
        "zip_kib": round(size_kib, 1),
        "iou_min": round(min(ious), 4),
        "iou_median": round(float(np.median(ious)), 4),
        "n_exact": int(sum(i == 1.0 for i in ious)),
        "targets": {"write_roi_zip_s": 2.0, "iou_min": 0.9},
        "passed": bool(
            median(write_times) < 2.0
            and min(ious) >= 0.9
            and n_rois == n_objects == len(rois)
            and names_ok
        ),
        "machine": {**machine(), "loadavg": load_start},
    }
    for key, value in result.items():
        if key not in ("machine", "write_roi_zip_s_all"):
            print(f"{key:24s} {value}")
    save("roi_export", result)
    if n_rois != n_objects:
        raise SystemExit(f"ROI count {n_rois} != object count {n_objects}")


if __name__ == "__main__":
    main()
