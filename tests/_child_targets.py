"""Generator functions the tests run in a child process (``tests._child_targets:echo``)."""

from __future__ import annotations

import os
import signal
import time


def echo(value, *, stop):
    """Yield the stop event's state, then return `value` as it arrived."""
    yield stop.is_set()
    return value


def die(*, stop):
    """Yield once, then die as the kernel's out-of-memory killer would kill it."""
    yield "about to die"
    os.kill(os.getpid(), signal.SIGKILL)
    time.sleep(60)  # pragma: no cover - never reached


def predict_with_memory_limit(*args, limit, stop, **kwargs):
    """``predict_generator`` on a device that runs out of memory above `limit` pixels a step."""
    import torch

    from napari_unet._widgets._jobs import predict_generator
    from napari_unet.core.model import UNet

    forward = UNet.forward

    def limited(self, x):
        if x.shape[0] * x.shape[-2] * x.shape[-1] > limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 4.00 GiB")
        return forward(self, x)

    UNet.forward = limited  # this process ends with the job
    return (yield from predict_generator(*args, stop=stop, **kwargs))
