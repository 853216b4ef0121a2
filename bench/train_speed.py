"""Training throughput: the core trainer against a bare PyTorch loop (issue 5, target 1).

Both train the same UNet (default TrainConfig: depth 4, base 16, patch 128, batch 8,
channels_last on CPU, AdamW, the same BCE + Dice loss) on the same device, in this
process. The bare loop cycles through batches already in memory as tensors: no
sampling, no augmentation, no progress objects, no loss read-back. The trainer is
:func:`napari_unet.core.train.iter_train` on real DSB2018 images, sampling and
augmenting every batch itself. The two run in interleaved chunks of ``--steps``
steps (trainer, bare, trainer, bare, ...) so that a change of machine load hits
both; the result is the median images/s of each and the ratio of the medians.

Target: trainer >= 0.95 x bare loop.

Usage: python bench/train_speed.py [--rounds 6] [--steps 15] [--quick]
"""

from __future__ import annotations

import argparse
import threading
import time

import numpy as np
from _common import dsb_fluo_pairs, loadavg, machine, median, save


def bare_loop(config, batches, device):
    """A minimal training loop over in-memory batches; a generator of step times."""
    import torch

    from napari_unet.core.losses import loss_function
    from napari_unet.core.model import UNet, UNetSpec

    torch.manual_seed(0)
    spec = UNetSpec(
        in_channels=batches[0][0].shape[1],
        out_channels=batches[0][1].shape[1],
        depth=config.depth,
        base_channels=config.base_channels,
        batch_norm=config.batch_norm,
        upsampling=config.upsampling,
    )
    model = UNet(spec).to(device).to(memory_format=torch.channels_last)
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    loss_fn = loss_function(config.loss)
    data = [
        (
            torch.from_numpy(x).to(device).contiguous(memory_format=torch.channels_last),
            torch.from_numpy(y).to(device),
            torch.from_numpy(w).to(device),
        )
        for x, y, w in batches
    ]
    i = 0
    while True:
        x, y, w = data[i % len(data)]
        i += 1
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y, w)
        loss.backward()
        opt.step()
        yield time.perf_counter()


def trainer_steps(images, labels, config, stop):
    """The core trainer; yields the time of each finished step."""
    from napari_unet.core.train import STEP, iter_train

    for p in iter_train(images, labels, config, stop=stop):
        if p.kind == STEP:
            yield time.perf_counter()


def chunk_rate(gen, steps: int, batch: int) -> float:
    """Images/s over ``steps`` steps of a step-time generator."""
    t0 = time.perf_counter()
    for _ in range(steps):
        t = next(gen)
    return steps * batch / (t - t0)


def main(argv=None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=15, help="steps per chunk")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--images", type=int, default=16)
    ap.add_argument("--quick", action="store_true", help="3 rounds of 8 steps")
    args = ap.parse_args(argv)
    if args.quick:
        args.rounds, args.steps = 3, 8

    import torch

    from napari_unet.core.data import Normalisation, PatchSampler, prepare_samples
    from napari_unet.core.device import describe_device, select_device
    from napari_unet.core.train import TrainConfig

    load_start = loadavg()
    pairs = dsb_fluo_pairs(args.images)
    images, labels = [p[0] for p in pairs], [p[1] for p in pairs]
    config = TrainConfig(
        epochs=1, steps_per_epoch=10**6, val_fraction=0.0, patience=None, device="auto"
    )
    device = select_device(config.device)
    samples = prepare_samples(images, labels, normalisation=Normalisation())
    sampler = PatchSampler(samples, config.patch_size, config.batch_size, 2, seed=1)
    batches = [sampler.batch() for _ in range(4)]
    # the cost of sampling + augmenting one batch, on its own (median of 20)
    t_sample = []
    for _ in range(20):
        t = time.perf_counter()
        sampler.batch()
        t_sample.append(time.perf_counter() - t)

    stop = threading.Event()
    ours = trainer_steps(images, labels, config, stop)
    bare = bare_loop(config, batches, device)
    for _ in range(args.warmup):
        next(ours)
        next(bare)
    rates_ours, rates_bare = [], []
    for r in range(args.rounds):
        # alternate which goes first, so neither always follows the other
        first, second = (ours, bare) if r % 2 == 0 else (bare, ours)
        a = chunk_rate(first, args.steps, config.batch_size)
        b = chunk_rate(second, args.steps, config.batch_size)
        ro, rb = (a, b) if r % 2 == 0 else (b, a)
        rates_ours.append(ro)
        rates_bare.append(rb)
        print(f"round {r + 1}: trainer {ro:6.2f} img/s, bare loop {rb:6.2f} img/s")
    stop.set()
    for _ in ours:  # let the trainer finish cleanly
        pass
    m_ours, m_bare = median(rates_ours), median(rates_bare)
    ratios = [o / b for o, b in zip(rates_ours, rates_bare, strict=True)]
    result = {
        "what": "images/s, core trainer vs bare PyTorch loop, default model and patch",
        "device": describe_device(device),
        "model": f"UNet depth {config.depth}, base {config.base_channels}",
        "patch": config.patch_size,
        "batch": config.batch_size,
        "channels_last": True,
        "amp": device.type == "cuda",
        "rounds": args.rounds,
        "steps_per_chunk": args.steps,
        "trainer_img_s": rates_ours,
        "bare_img_s": rates_bare,
        "trainer_img_s_median": round(m_ours, 3),
        "bare_img_s_median": round(m_bare, 3),
        "ratio": round(m_ours / m_bare, 3),
        "ratio_per_round_median": round(median(ratios), 3),
        "sample_batch_ms_median": round(1000 * median(t_sample), 2),
        "torch_threads": torch.get_num_threads(),
        "target_ratio": 0.95,
        "passed": m_ours / m_bare >= 0.95,
        "loadavg_start": load_start,
        "machine": machine(),
    }
    print(
        f"trainer {m_ours:.2f} img/s, bare {m_bare:.2f} img/s, ratio {m_ours / m_bare:.3f} "
        f"(sampling one batch: {result['sample_batch_ms_median']} ms)"
    )
    save("train_speed", result)
    return result


if __name__ == "__main__":
    np.seterr(all="ignore")
    main()
