"""bfloat16 against float32 on this CPU: the default UNet's forward pass and training step.

Measures, with the default UNet (depth 4, base 16, channels_last) and ``--threads`` threads
(2, the CPU budget this project is measured with):

- prediction: a forward pass of 4 tiles of 512x512 (Mpixel/s), float32 against
  ``torch.autocast("cpu", dtype=torch.bfloat16)``, and the largest difference of the
  sigmoid outputs;
- training: a step of batch 8 x 128x128 with AdamW, the forward pass under autocast
  (images/s).

It records the CPU's flags that matter (avx512_bf16, amx_bf16, amx_tile, avx512f) and
torch's own view (``torch.backends.cpu.get_cpu_capability()``), so the JSON says whether
bfloat16 is native here. Each figure is the median of ``--repeats`` timed runs after a
warm-up::

    python bench/cpu_bf16.py [--threads 2] [--repeats 5] [--out bench/results/cpu_bf16.json]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import RESULTS, machine  # noqa: E402

FLAGS = ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_fp16", "avx2")


def cpu_flags() -> dict:
    """The CPU flags of interest, from /proc/cpuinfo (Linux), and torch's capability."""
    import torch

    flags: set[str] = set()
    try:
        text = Path("/proc/cpuinfo").read_text()
        for line in text.splitlines():
            if line.startswith("flags"):
                flags = set(line.split(":", 1)[1].split())
                break
    except OSError:
        pass
    out = {f: f in flags for f in FLAGS}
    try:
        out["torch_capability"] = torch.backends.cpu.get_cpu_capability()
    except AttributeError:
        out["torch_capability"] = None
    return out


def _time(fn, repeats: int) -> list[float]:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return times


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--tile", type=int, default=512)
    ap.add_argument("--out", type=Path, default=RESULTS / "cpu_bf16.json")
    args = ap.parse_args(argv)

    import torch

    from napari_unet.core.model import UNet, UNetSpec

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    result = {"machine": machine(), "flags": cpu_flags(), "threads": args.threads}
    model = UNet(UNetSpec(in_channels=1, out_channels=2)).eval()
    model.to(memory_format=torch.channels_last)
    x = torch.rand(4, 1, args.tile, args.tile).contiguous(memory_format=torch.channels_last)

    outputs = {}

    def forward(bf16: bool):
        def run():
            with torch.inference_mode(), torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                outputs[bf16] = torch.sigmoid(model(x).float())

        return run

    pred = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        t = _time(forward(bf16), args.repeats)
        pred[name] = {
            "seconds": float(np.median(t)),
            "mpix_s": float(x.shape[0] * args.tile**2 / 1e6 / np.median(t)),
            "runs": [round(v, 4) for v in t],
        }
    pred["bf16_speedup"] = pred["fp32"]["seconds"] / pred["bf16"]["seconds"]
    pred["max_sigmoid_difference"] = float((outputs[True] - outputs[False]).abs().max())
    result["predict"] = pred

    train_model = UNet(UNetSpec(in_channels=1, out_channels=2)).train()
    train_model.to(memory_format=torch.channels_last)
    opt = torch.optim.AdamW(train_model.parameters(), lr=1e-3)
    xb = torch.rand(8, 1, 128, 128).contiguous(memory_format=torch.channels_last)
    yb = (torch.rand(8, 2, 128, 128) > 0.5).float()

    def step(bf16: bool):
        def run():
            opt.zero_grad(set_to_none=True)
            with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
                logits = train_model(xb)
            loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), yb)
            loss.backward()
            opt.step()

        return run

    train = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        t = _time(step(bf16), args.repeats)
        train[name] = {
            "seconds_per_step": float(np.median(t)),
            "img_s": float(8 / np.median(t)),
            "runs": [round(v, 4) for v in t],
        }
    train["bf16_speedup"] = train["fp32"]["seconds_per_step"] / train["bf16"]["seconds_per_step"]
    result["train"] = train

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1), encoding="utf-8")
    f = result["flags"]
    print(f"CPU {result['machine'].get('processor')}, {args.threads} threads, flags {f}")
    print(
        f"predict 4x{args.tile}^2: fp32 {pred['fp32']['mpix_s']:.2f} Mpixel/s, bf16 "
        f"{pred['bf16']['mpix_s']:.2f} Mpixel/s ({pred['bf16_speedup']:.2f}x), max |dp| "
        f"{pred['max_sigmoid_difference']:.1e}"
    )
    print(
        f"train batch 8x128^2: fp32 {train['fp32']['img_s']:.1f} img/s, bf16 "
        f"{train['bf16']['img_s']:.1f} img/s ({train['bf16_speedup']:.2f}x)"
    )
    print(f"saved {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
