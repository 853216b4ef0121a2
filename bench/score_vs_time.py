"""Score on the held-back DSB2018 images against training time: one default training per budget.

For each budget M this runs ``bench/dsb_unet_vs_otsu.py --minutes M`` (``napari-unet train
--minutes M`` with default settings, then ``napari-unet predict`` defaults on the 67
held-back images) in a fresh process, one after the other, so each point is what a user
gets from that budget (the learning-rate schedule is fitted to the budget, so the
checkpoints of one long run would not be). Run it on a quiet machine: the budgets are
wall-clock time.

Usage: python bench/score_vs_time.py [--minutes 2.5 5 10 30] [--reuse]
Prints a table and writes bench/results/score_vs_time.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--minutes", type=float, nargs="+", default=[2.5, 5, 10, 30])
    ap.add_argument(
        "--reuse",
        action="store_true",
        help="take budgets already in bench/results/dsb_unet_vs_otsu_<M>min.json as they are",
    )
    args = ap.parse_args()
    points = []
    for m in sorted(args.minutes):
        res = RESULTS / f"dsb_unet_vs_otsu_{m:g}min.json"
        if not (args.reuse and res.exists()):
            cmd = [sys.executable, str(HERE / "dsb_unet_vs_otsu.py"), "--minutes", f"{m:g}"]
            print("$ " + " ".join(cmd[1:]), flush=True)
            subprocess.run(cmd, check=True, env=dict(os.environ))
        r = json.loads(res.read_text())
        points.append(
            {
                "minutes": m,
                "train_steps": r["train_steps"],
                "train_wall_s": r["train_wall_s"],
                "device": r["device"],
                **{k: r["unet"][k] for k in ("f1", "dsb_score", "pq", "dice")},
                "by_kind": {
                    k: {"f1": v["f1"], "dsb_score": v["dsb_score"]}
                    for k, v in r["unet_by_kind"].items()
                },
            }
        )
    head = ("minutes", "steps", "F1", "DSB", "PQ", "Dice")
    print("\n" + " ".join(f"{h:>8s}" if i == 0 else f"{h:>6s}" for i, h in enumerate(head)), end="")
    print("  F1 by kind")
    for p in points:
        kinds = ", ".join(f"{k} {v['f1']:.3f}" for k, v in sorted(p["by_kind"].items()))
        print(
            f"{p['minutes']:8g} {p['train_steps']:6d} {p['f1']:6.3f} {p['dsb_score']:6.3f} "
            f"{p['pq']:6.3f} {p['dice']:6.3f}  {kinds}"
        )
    out = RESULTS / "score_vs_time.json"
    out.write_text(json.dumps({"points": points}, indent=2))
    print(f"\nsaved {out}")


if __name__ == "__main__":
    main()
