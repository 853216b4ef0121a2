"""Training on several processes (GPUs, nodes) with PyTorch's DistributedDataParallel.

``torchrun`` starts one process per GPU (or per CPU share) and sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :meth:`Distributed.from_env` reads them. Passed to
:func:`napari_unet.core.train.iter_train`, a :class:`Distributed` makes every
rank train the same model:

- the process group uses NCCL on CUDA and gloo on CPU; each rank uses the GPU
  ``LOCAL_RANK`` (or, on CPU, its share of the cores);
- the model is wrapped in ``DistributedDataParallel`` (gradients averaged);
- each rank samples its own share of the training images, with its own seed;
- validation images are shared out too, and the scores reduced (a pixel-weighted
  mean of the ranks' scores), so every rank takes the same "best model" and
  early-stopping decisions;
- stop decisions (Ctrl-C on any rank, the time budget, a NaN loss) are agreed
  with one small all-reduce, so all ranks stop at the same step;
- only rank 0 writes checkpoints (the command line also takes the lock on rank 0
  only).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.errors import NapariUnetError

if TYPE_CHECKING:
    import torch

__all__ = ["Distributed"]


def _env_int(name: str) -> int | None:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError as exc:
        raise NapariUnetError(
            f"environment variable {name}={value!r} is not a whole number."
        ) from exc


@dataclass
class Distributed:
    """One rank of a distributed training run.

    Attributes
    ----------
    rank, world_size : int
        This process's rank and the number of processes in all.
    local_rank, local_world_size : int
        Rank and count of the processes on this node.
    """

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    _started_group: bool = False

    @classmethod
    def from_env(cls) -> Distributed | None:
        """Return the rank described by torchrun's variables, or None outside torchrun.

        Raises
        ------
        NapariUnetError
            If the variables are inconsistent (e.g. ``RANK`` >= ``WORLD_SIZE``).
        """
        world = _env_int("WORLD_SIZE")
        if world is None or world <= 1:
            return None
        rank = _env_int("RANK")
        local = _env_int("LOCAL_RANK")
        local_world = _env_int("LOCAL_WORLD_SIZE") or world
        if rank is None or local is None:
            raise NapariUnetError(
                "WORLD_SIZE is set but RANK or LOCAL_RANK is not: start distributed training "
                "with torchrun (e.g. torchrun --nproc_per_node=2 -m napari_unet train ...)."
            )
        if not (0 <= rank < world and 0 <= local < local_world):
            raise NapariUnetError(
                f"inconsistent torchrun variables: RANK={rank}, WORLD_SIZE={world}, "
                f"LOCAL_RANK={local}, LOCAL_WORLD_SIZE={local_world}."
            )
        return cls(rank, world, local, local_world)

    @property
    def is_main(self) -> bool:
        """True on rank 0, the rank that writes files and reports progress."""
        return self.rank == 0

    # ------------------------------------------------------------ setup
    def start(self, device: torch.device) -> torch.device:
        """Join the process group and return this rank's device.

        CUDA: NCCL, GPU ``LOCAL_RANK``. CPU (and MPS, which has no collective
        backend: CPU is used instead): gloo, and ``cores / local_world_size``
        threads (``NAPARI_UNET_THREADS`` overrides).
        """
        import torch
        import torch.distributed as dist

        if device.type == "cuda":
            if self.local_rank >= torch.cuda.device_count():
                raise NapariUnetError(
                    f"LOCAL_RANK {self.local_rank} but only {torch.cuda.device_count()} GPU(s) "
                    "visible: use --nproc_per_node at most the number of GPUs."
                )
            device = torch.device("cuda", self.local_rank)
            torch.cuda.set_device(device)
            backend = "nccl"
        else:
            device = torch.device("cpu")
            backend = "gloo"
            threads = _env_int("NAPARI_UNET_THREADS")
            if threads is None:
                cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
                threads = max(1, (cores or os.cpu_count() or 1) // self.local_world_size)
            torch.set_num_threads(max(1, threads))
        if not dist.is_initialized():
            dist.init_process_group(
                backend=backend, device_id=device if backend == "nccl" else None
            )
            self._started_group = True
        self._device = device
        return device

    def close(self) -> None:
        """Leave the process group (if :meth:`start` joined it)."""
        import torch.distributed as dist

        if self._started_group and dist.is_initialized():
            dist.destroy_process_group()
            self._started_group = False

    # ------------------------------------------------------------ pieces for iter_train
    def wrap(self, model):
        """Wrap ``model`` (already on this rank's device) in DistributedDataParallel."""
        from torch.nn.parallel import DistributedDataParallel as DDP

        ids = [self._device.index] if self._device.type == "cuda" else None
        return DDP(model, device_ids=ids)

    def share(self, items: Sequence) -> list:
        """Return this rank's share of ``items`` (every ``world_size``-th, from ``rank``).

        With fewer items than ranks every rank gets all of them (the ranks still
        draw different patches, by seed).
        """
        items = list(items)
        if len(items) < self.world_size:
            return items
        return items[self.rank :: self.world_size]

    def seed(self, seed: int) -> int:
        """Return a different sampling seed per rank."""
        return int(seed) + 1000003 * self.rank

    def _tensor(self, values):
        import torch

        dev = self._device if self._device.type == "cuda" else torch.device("cpu")
        return torch.tensor(values, dtype=torch.float64, device=dev)

    def agree_max(self, values: Sequence[float]) -> list[float]:
        """Element-wise maximum over ranks (e.g. stop flags, elapsed seconds)."""
        import torch.distributed as dist

        t = self._tensor([float(v) for v in values])
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return t.cpu().tolist()

    def mean(self, value: float) -> float:
        """Mean of ``value`` over ranks (NaN anywhere gives NaN everywhere)."""
        import torch.distributed as dist

        t = self._tensor([float(value)])
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        return float(t.item()) / self.world_size

    def reduce_scores(self, entry: dict | None, weight: float) -> dict:
        """Weighted mean over ranks of the validation scores in ``entry``.

        Ranks without validation images pass ``entry=None`` and ``weight=0``.
        Keys: ``val_loss``, ``dice``, ``f1``, ``score`` (those present on every
        rank that validated); ``score`` is F1 when every rank scored objects and
        Dice otherwise, as :func:`napari_unet.core.validation.validate` decides for
        one process.
        """
        import torch.distributed as dist

        keys = ("val_loss", "dice", "f1", "score")
        vals = [0.0] * (2 * len(keys) + 1)
        vals[-1] = float(weight)
        if entry is not None and weight > 0:
            for i, k in enumerate(keys):
                if entry.get(k) is not None:
                    vals[2 * i] = float(entry[k]) * weight
                    vals[2 * i + 1] = float(weight)
        t = self._tensor(vals)
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
        v = t.cpu().numpy()
        out: dict = {}
        for i, k in enumerate(keys):
            if v[2 * i + 1] > 0 and np.isclose(v[2 * i + 1], v[-1]):
                out[k] = float(v[2 * i] / v[2 * i + 1])
        if "dice" in out:  # as one process: F1 only when every rank could score objects
            out["score"] = out.get("f1", out["dice"])
        return out

    def validate(self, validate_fn, bundle, val: Sequence, *args) -> dict:
        """Score this rank's share of ``val`` with ``validate_fn``; reduce over ranks.

        Every rank must call it at the same step. The result is the mean of the
        ranks' scores weighted by their validation pixels (with as many ranks as
        images it is the per-image mean, not the pooled score of one process).
        """
        mine = list(val)[self.rank :: self.world_size]
        entry = validate_fn(bundle, mine, *args) if mine else None
        weight = float(sum(s.shape[0] * s.shape[1] for s in mine))
        return self.reduce_scores(entry, weight)

    def barrier(self) -> None:
        """Wait for every rank."""
        import torch.distributed as dist

        dist.barrier()
