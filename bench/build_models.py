"""Rebuild the built-in models from the command line.

Each built-in model is trained by ``napari-unet train`` with the recipe written here
(data, ids, every setting, seed, time budget); the device is the first of CUDA, MPS and
CPU that is present and is recorded in the model file and in ``<out>.build.json``::

    python bench/build_models.py nuclei --data ../shared/data/dsb2018_stage1_train \\
        --out models/nuclei.pt
    python bench/build_models.py nuclei ... --resume      # continue an interrupted run
    python bench/build_models.py nuclei ... --install     # float16 copy into the package

The data are the 597 training ids of DSB 2018 stage 1 (``bench/splits/dsb2018_train_ids.txt``);
the 67 held-back ids and ``external/`` are never trained on. ``--minutes`` replaces a
recipe's time budget (a short trial); the model card (docs/models.md) says which budget
and device each shipped model had.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
IDS = ROOT / "bench" / "splits" / "dsb2018_train_ids.txt"

#: name -> (title, napari-unet train options). The time budget is for a GPU; on a CPU the
#: same number of steps takes about 100 times as long (give --minutes to cap it).
RECIPES: dict[str, dict] = {
    "nuclei": {
        "title": "Nuclei (fluorescence, brightfield, H&E)",
        # shipped samples that are among its training ids: Correct & retrain replays them
        "replay": ["fluo_dense", "fluo_crowded", "fluo_mixed", "he_tissue", "he_cells"],
        "minutes": 6.0,
        "options": [
            "--object-diameter", "20",
            "--zoom", "0.5",
            "--style-augment",
            "--batch-size", "16",
            "--steps-per-epoch", "2000",
            "--val-fraction", "0.05",
            "--seed", "0",
        ],
    },
    # ablation: the same without object size normalisation (images at their own size)
    "nuclei-nosize": {
        "title": "Nuclei, trained at the images' own size (ablation)",
        "minutes": 6.0,
        "options": [
            "--zoom", "0.5",
            "--style-augment",
            "--batch-size", "16",
            "--steps-per-epoch", "2000",
            "--val-fraction", "0.05",
            "--seed", "0",
        ],
    },
    # a larger canonical object size (more pixels per nucleus, slower prediction)
    "nuclei-d30": {
        "title": "Nuclei at 30 px (variant)",
        "minutes": 6.0,
        "options": [
            "--object-diameter", "30",
            "--zoom", "0.5",
            "--style-augment",
            "--batch-size", "16",
            "--steps-per-epoch", "2000",
            "--val-fraction", "0.05",
            "--seed", "0",
        ],
    },
}  # fmt: skip


def command(name: str, data: Path, out: Path, minutes: float | None, resume: bool) -> list[str]:
    """Return the ``napari-unet train`` command line of recipe ``name``."""
    recipe = RECIPES[name]
    cmd = [
        sys.executable, "-m", "napari_unet", "train",
        "--images", str(data / "images"),
        "--labels", str(data / "masks"),
        "--ids-file", str(IDS),
        "--out", str(out),
        "--minutes", str(minutes if minutes is not None else recipe["minutes"]),
        *recipe["options"],
    ]  # fmt: skip
    if resume:
        cmd += ["--resume", str(out)]
    else:
        cmd += ["--overwrite"]
    return cmd


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("name", choices=sorted(RECIPES))
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared/data/dsb2018_stage1_train")
    p.add_argument("--out", type=Path, required=True, help="model file to write (.pt)")
    p.add_argument("--minutes", type=float, help="replace the recipe's time budget")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--install", action="store_true", help="only copy --out into the package, as float16"
    )
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1 :] if "--" in argv else []  # more train options
    args = p.parse_args(argv[: len(argv) - len(extra) - bool(extra)])
    args.extra = extra
    if args.install:
        return install(args.name, args.out)
    cmd = command(args.name, args.data, args.out, args.minutes, args.resume) + args.extra
    print(" ".join(cmd), flush=True)
    t0 = time.time()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    rc = subprocess.call(cmd, env=env)
    record = {
        "name": args.name,
        "command": cmd[1:],
        "seconds": round(time.time() - t0, 1),
        "returncode": rc,
        "host": platform.node(),
        "python": platform.python_version(),
    }
    try:
        import torch

        record["torch"] = torch.__version__
        if torch.cuda.is_available():
            record["gpu"] = torch.cuda.get_device_name(0)
    except ImportError:
        pass
    Path(f"{args.out}.build.json").write_text(json.dumps(record, indent=1), encoding="utf-8")
    return rc


def install(name: str, path: Path) -> int:
    """Copy a trained model into ``napari_unet/models`` with float16 weights."""
    from napari_unet.core.builtin import PACKAGE_MODELS_DIR
    from napari_unet.core.checkpoint import install_model

    recipe = RECIPES[name]
    entry = install_model(
        path, name, recipe["title"], folder=PACKAGE_MODELS_DIR, replay=recipe.get("replay", ())
    )
    dest = entry.folder / entry.file
    print(f"installed {name} -> {dest} ({dest.stat().st_size / 1e6:.1f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
