"""Experiment: Fisher-weighted merging instead of the uniform blend (run the bench under it).

Usage: python docs/dev/fisher_merge.py GAMMA -- <bench/correct_retrain.py arguments>
(measured: docs/dev/correct_retrain.md, "Fisher-weighted merging"; not used by the package)
Each parameter keeps share s = (Fn + 0.1 a) / (Fn + GAMMA * Fo + 0.1) of the fine-tune's change
(a: the uniform blend, FinetuneConfig.blend), where Fn is
the (mean-normalised) diagonal Fisher of the fine-tuned model on the corrections and Fo that
of the built-in model on the replayed images; BatchNorm statistics get the uniform blend.
"""

import dataclasses
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "bench"))
GAMMA = float(sys.argv[1])
sys.argv = [sys.argv[0]] + sys.argv[3:]

import napari_unet.core.finetune as FT  # noqa: E402

STASH = {}
_orig_iter = FT.iter_finetune


def iter_finetune(images, annotations, init, config=None, **kw):
    """Keep the retrain's data for the merge, then run the package's retrain."""
    STASH["images"], STASH["annotations"] = list(images), list(annotations)
    from napari_unet.core.builtin import replay_data

    STASH["replay"] = replay_data(init)
    return (yield from _orig_iter(images, annotations, init, config, **kw))


FT.iter_finetune = iter_finetune


def fisher(bundle, samples, n_batches=8, seed=0):
    """Return the diagonal (empirical) Fisher of `bundle` on `samples`, mean 1."""
    from napari_unet.core.data import PatchSampler
    from napari_unet.core.losses import loss_function

    cfg = STASH["cfg"]
    sampler = PatchSampler(
        samples, cfg.patch_size, 8, bundle.spec.out_channels, augment=True, seed=seed
    )
    loss_fn = loss_function("bce_dice" if cfg.loss != "weighted_bce" else "bce")
    model = bundle.model.to("cpu")
    model.train()  # batch statistics, as in training
    acc = {n: torch.zeros_like(p) for n, p in model.named_parameters()}
    state = {k: v.clone() for k, v in model.state_dict().items()}  # BN stats move in train()
    for _ in range(n_batches):
        x, y, w = (torch.as_tensor(a) for a in sampler.batch())
        model.zero_grad(set_to_none=True)
        loss = loss_fn(model(x).float(), y, w)
        loss.backward()
        for n, p in model.named_parameters():
            if p.grad is not None:
                acc[n] += p.grad.detach() ** 2
    model.load_state_dict(state)
    model.zero_grad(set_to_none=True)
    mean = torch.cat([a.flatten() for a in acc.values()]).mean()
    return {n: a / mean for n, a in acc.items()}


def blend_weights(new, start, share):
    """Merge `new` towards `start` parameter by parameter, by the two Fishers."""
    from napari_unet.core.data import Normalisation
    from napari_unet.core.train_config import TrainConfig
    from napari_unet.core.train_setup import prepare_data

    known = {f.name for f in dataclasses.fields(TrainConfig)}
    cfg = TrainConfig.from_dict({k: v for k, v in new.meta["train_config"].items() if k in known})
    cfg.sparse, cfg.val_fraction = True, 0.0
    STASH["cfg"] = cfg
    norm = Normalisation.from_dict(new.meta.get("normalisation", {}))
    data = prepare_data(
        STASH["images"], STASH["annotations"], cfg, norm, None, new, STASH["replay"]
    )
    own = [s for s in data.train if not s.replay]
    rep = [s for s in data.train if s.replay]
    fn_ = fisher(new, own)
    fo = fisher(start, rep)
    ref = start.model.state_dict()
    params = dict(new.model.named_parameters())
    shares = []
    with torch.no_grad():
        for key, value in new.model.state_dict().items():
            if not value.is_floating_point():
                continue
            base = ref[key].to(device=value.device, dtype=value.dtype)
            if key in params:
                c = 0.1  # where neither set cares, the uniform blend
                s = (fn_[key] + c * share) / (fn_[key] + GAMMA * fo[key] + c)
                shares.append(float(s.mean()))
            else:
                s = share
            value.copy_(base + s * (value - base))
    print(f"  fisher merge: mean share {np.mean(shares):.3f}", flush=True)


FT.blend_weights = blend_weights

import runpy  # noqa: E402

runpy.run_path(str(ROOT / "bench" / "correct_retrain.py"), run_name="__main__")
