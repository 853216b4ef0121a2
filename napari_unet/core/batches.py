"""Training batches: cut beside the training loop, and made smaller when memory runs out.

A :class:`BatchStream` hands the trainer batches of augmented patches as tensors, cut
by its own process or by worker processes from a
:class:`~napari_unet.core.data.PatchSampler`; :func:`shrink_sampler` halves the batch
(then the patch) after the device ran out of memory, and says so; :func:`make_batches`
builds the sampler and the stream for a run's settings.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from napari_unet.core.data import PatchSampler, Sample
from napari_unet.core.errors import NapariUnetError

if TYPE_CHECKING:
    from napari_unet.core.distributed import Distributed
    from napari_unet.core.train_config import TrainConfig

__all__ = ["BatchStream", "make_batches", "shrink_sampler", "MIN_PATCH"]

#: The smallest training patch tried when the device runs out of memory.
MIN_PATCH = 32


def _sampler_dataset(sampler: PatchSampler, seed: int):
    """Return an endless torch IterableDataset of a sampler's batches.

    Each worker process reseeds its copy of the sampler, so they draw different patches.
    """
    import torch

    class SamplerDataset(torch.utils.data.IterableDataset):
        def __iter__(self):
            info = torch.utils.data.get_worker_info()
            if info is not None:
                sampler.rng = np.random.default_rng([seed, 7919, info.id])
            while True:
                yield sampler.batch()

    return SamplerDataset()


class BatchStream:
    """Training batches as tensors: cut in this process, or by ``workers`` processes.

    Workers are forked (the samples are shared, not copied) and only run numpy; the
    batches come back through torch's DataLoader, pinned for the copy to the GPU.

    Parameters
    ----------
    sampler : PatchSampler
    workers : int
        Worker processes (0: batches are cut in this process, as where there is no fork).
    seed : int
        Seeds the workers' copies of the sampler.
    """

    def __init__(self, sampler: PatchSampler, workers: int, seed: int) -> None:
        self.sampler = sampler
        self._iter = None
        self._loader = None
        if workers > 0:
            import multiprocessing

            import torch

            try:
                ctx = multiprocessing.get_context("fork")
            except ValueError:  # no fork (Windows, macOS default): cut patches here
                return
            self._loader = torch.utils.data.DataLoader(
                _sampler_dataset(sampler, seed),
                batch_size=None,
                num_workers=workers,
                pin_memory=torch.cuda.is_available(),
                prefetch_factor=4,
                multiprocessing_context=ctx,
            )
            self._iter = iter(self._loader)

    def next(self):
        """Return the next ``(images, targets, weights)`` tensors, on the CPU."""
        import torch

        if self._iter is None:
            return tuple(torch.from_numpy(a) for a in self.sampler.batch())
        return next(self._iter)

    def shrink(self, device_text: str) -> str:
        """After an out-of-memory: cut smaller batches in this process; say what was done.

        The workers hold copies of the sampler, so they are stopped and the batches are
        cut here from then on, with :func:`shrink_sampler`.
        """
        self.close()
        return shrink_sampler(self.sampler, device_text)

    def close(self) -> None:
        """Stop the worker processes."""
        it, self._iter = self._iter, None
        if it is not None and hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()
        self._loader = None


def make_batches(
    config: TrainConfig,
    samples: Sequence[Sample],
    n_outputs: int,
    device,
    distributed: Distributed | None = None,
) -> BatchStream:
    """Return the batches a run trains on: its sampler, and worker processes on a GPU.

    Parameters
    ----------
    config : TrainConfig
        Patch and batch size, augmentation, seed and ``workers`` (None: up to 6 on CUDA,
        none elsewhere, where they would compete with the training for the cores).
    samples : sequence of Sample
        The training samples (under torchrun, this rank draws from its share).
    n_outputs : int
    device : torch.device
    distributed : Distributed, optional

    Returns
    -------
    BatchStream
        Its ``sampler`` is the one the batches come from.
    """
    sampler = PatchSampler(
        samples if distributed is None else distributed.share(samples),
        config.patch_size,
        config.batch_size,
        n_outputs,
        fg_fraction=config.fg_fraction,
        augment=config.augment,
        seed=config.seed if distributed is None else distributed.seed(config.seed),
        by_loss=config.sample_by_loss,
        zoom=config.zoom,
        style=config.style_augment,
        replay_share=config.replay_share,
    )
    workers = config.workers
    if workers is None:
        workers = min(6, max(0, (os.cpu_count() or 1) - 2)) if device.type == "cuda" else 0
    # these need this process's sampler (which patches were drawn from which image)
    distills = config.distill > 0 and any(s.replay for s in sampler.samples)
    if distributed is not None or sampler.by_loss > 0 or distills:
        workers = 0
    return BatchStream(sampler, workers, config.seed)


def shrink_sampler(sampler: PatchSampler, device_text: str) -> str:
    """Halve the batch (then the patch) after an out-of-memory; say what was done.

    Raises
    ------
    NapariUnetError
        When one patch of the smallest size per step does not fit either.
    """
    if sampler.batch_size > 1:
        sampler.batch_size = max(1, sampler.batch_size // 2)
    elif sampler.patch > MIN_PATCH:
        sampler.patch = max(MIN_PATCH, sampler.patch // 2)
    else:
        raise NapariUnetError(
            f"{device_text} ran out of memory even with one {sampler.patch}x{sampler.patch} "
            "patch per step. Close other programs using the GPU, choose a smaller model "
            "(depth, base channels) or train on the CPU (device 'cpu')."
        )
    return (
        f"{device_text} ran out of memory: continuing with batch size {sampler.batch_size} "
        f"and patch size {sampler.patch}"
    )
