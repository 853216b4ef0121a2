"""Prediction time of a built-in model against a default-trained model, 1024x1024 images, this CPU.

Both models predict the same images with the defaults of ``napari-unet predict`` (the built-in
one with its automatic object size: estimate, resize, predict, resize back), interleaved,
``--repeats`` times each; the medians and their ratio are printed and saved to
bench/results/builtin_speed.json. Images:

- ``dsb_tiled``: 1024x1024 of DSB 2018 fluorescence nuclei (about 18 px across), tiled from
  256x256 DSB images (bench/_common.py ``dsb_tiled``);
- ``gowt1``: a 1024x1024 frame of ``external/ctc_gowt1_nuclei`` (about 60 px across).

    python bench/builtin_speed.py --baseline default.pt [--model nuclei] [--repeats 5]

``default.pt`` is a model trained by ``napari-unet train`` with its defaults (depth 4, base 16;
e.g. 30 minutes on the DSB 2018 training ids), today's model of a user who trained one.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
DATA = Path(os.environ.get("NAPARI_UNET_DATA", str(HERE.parent.parent / "shared" / "data")))

from _common import dsb_tiled, loadavg, machine, median, save  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="nuclei")
    ap.add_argument("--baseline", required=True, help="a model trained with the defaults")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args(argv)

    import torch

    from napari_unet.core.builtin import resolve_model
    from napari_unet.core.checkpoint import load_checkpoint
    from napari_unet.core.io import read_image
    from napari_unet.core.predict import PredictConfig, predict

    torch.set_num_threads(min(2, os.cpu_count() or 1))
    images = {"dsb_tiled": dsb_tiled(1024, n_objects=10**6)[1]}
    gowt1 = sorted((DATA / "external" / "ctc_gowt1_nuclei" / "images").glob("*.tif"))
    if gowt1:
        images["gowt1"] = read_image(gowt1[0])
    models = {
        "builtin": load_checkpoint(resolve_model(args.model)),
        "default": load_checkpoint(args.baseline),
    }
    result = {"machine": machine(), "loadavg_start": loadavg(), "images": {}}
    for name, image in images.items():
        times = {k: [] for k in models}
        notes = {}
        for _ in range(args.repeats + 1):  # the first round warms up
            for key, bundle in models.items():
                cfg = PredictConfig.for_model(bundle)
                t = time.perf_counter()
                r = predict(bundle, image, config=cfg)
                times[key].append(time.perf_counter() - t)
                notes[key] = r.scale.describe() if hasattr(r, "scale") else ""
        entry = {k: {"seconds": v[1:], "median_s": median(v[1:])} for k, v in times.items()}
        entry["ratio"] = entry["builtin"]["median_s"] / entry["default"]["median_s"]
        entry["size"] = notes
        result["images"][name] = entry
        print(
            f"{name}: built-in {entry['builtin']['median_s']:.2f} s ({notes['builtin']}), "
            f"default {entry['default']['median_s']:.2f} s: ratio {entry['ratio']:.2f}",
            flush=True,
        )
    result["loadavg_end"] = loadavg()
    print(f"saved {save('builtin_speed', result)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
