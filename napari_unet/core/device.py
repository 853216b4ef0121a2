"""Choosing and describing the compute device (CUDA, then Apple MPS, then CPU)."""

from __future__ import annotations

import ctypes
import functools
import sys

import torch

from napari_unet.core.errors import NapariUnetError

DEVICE_CHOICES = ("auto", "cuda", "mps", "cpu")


def select_device(preference: str = "auto") -> torch.device:
    """Return the device to compute on.

    Parameters
    ----------
    preference : {"auto", "cuda", "mps", "cpu"} or a torch device string
        "auto" picks CUDA when available, then Apple MPS, then the CPU.

    Raises
    ------
    NapariUnetError
        When an explicitly requested device is not available.
    """
    pref = (preference or "auto").lower()
    mps = getattr(torch.backends, "mps", None)
    mps_ok = bool(mps is not None and mps.is_available())
    if pref == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if mps_ok:
            return torch.device("mps")
        return torch.device("cpu")
    if pref.startswith("cuda") and not torch.cuda.is_available():
        raise NapariUnetError(
            "CUDA was requested but this PyTorch has no usable CUDA GPU "
            f"(torch {torch.__version__}). Use device 'auto' or 'cpu', or install a CUDA "
            "build of PyTorch (see the README)."
        )
    if pref == "mps" and not mps_ok:
        raise NapariUnetError("Apple MPS was requested but is not available on this machine.")
    try:
        return torch.device(pref)
    except RuntimeError as e:
        raise NapariUnetError(f"Unknown device {preference!r}; use one of {DEVICE_CHOICES}.") from e


def describe_device(device: torch.device) -> str:
    """Human description of ``device``, e.g. ``"CUDA: NVIDIA H100"`` or ``"CPU (2 threads)"``."""
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        return f"CUDA: {torch.cuda.get_device_name(idx)}"
    if device.type == "mps":
        return "Apple MPS"
    return f"CPU ({torch.get_num_threads()} threads)"


def release_memory(device: torch.device) -> None:
    """Give memory back to the system after work ends.

    Empties the CUDA or MPS cache, and on Linux asks glibc to return freed heap
    memory (``malloc_trim``): without it the process keeps hundreds of MiB of
    freed activations after training or predicting on the CPU (measured in
    ``bench/memory_after.py``).
    """
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()
    trim_heap()


def trim_heap() -> bool:
    """Return freed heap memory to the OS (glibc ``malloc_trim(0)``).

    Returns
    -------
    bool
        False where there is nothing to call (not Linux, or a libc without
        ``malloc_trim`` such as musl).
    """
    trim = _malloc_trim()
    if trim is None:
        return False
    trim(0)
    return True


@functools.lru_cache(maxsize=1)
def _malloc_trim():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL("libc.so.6").malloc_trim
    except (OSError, AttributeError):  # no glibc (e.g. musl)
        return None


#: Phrases in the errors PyTorch raises when an allocation fails (CUDA, MPS, CPU).
_OOM_PHRASES = ("out of memory", "can't allocate memory", "failed to allocate")


def is_out_of_memory(error: BaseException) -> bool:
    """Return True if `error` says that the device (or the CPU) ran out of memory.

    ``torch.OutOfMemoryError`` on CUDA; MPS and the CPU allocator raise plain
    ``RuntimeError`` with a message.
    """
    oom_type = getattr(torch, "OutOfMemoryError", None)
    if oom_type is not None and isinstance(error, oom_type):
        return True
    if not isinstance(error, RuntimeError | MemoryError):
        return False
    text = str(error).lower()
    return isinstance(error, MemoryError) or any(p in text for p in _OOM_PHRASES)
