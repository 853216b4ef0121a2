"""Choosing and describing the compute device (CUDA, then Apple MPS, then CPU)."""

from __future__ import annotations

import contextlib
import ctypes
import functools
import os
import sys
from pathlib import Path

import torch

from napari_unet.core.errors import NapariUnetError
from napari_unet.core.errors import is_out_of_memory as is_out_of_memory  # its old home
from napari_unet.core.options import DEVICE_CHOICES, PRECISIONS

#: Environment variable that decides what precision "auto" means on the CPU ("fp32" or
#: "bf16"), whatever the CPU; "auto" or unset: decided by the CPU's flags.
PRECISION_ENV = "NAPARI_UNET_PRECISION"

#: CPU flags (Linux /proc/cpuinfo) of native bfloat16 arithmetic: Intel AMX, or AVX-512
#: BF16 (Intel Cooper Lake and later, AMD Zen 4 and later).
BF16_FLAGS = frozenset({"amx_bf16", "avx512_bf16"})


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


def describe_device(device: torch.device, precision: str | None = None) -> str:
    """Human description of ``device``, e.g. ``"CUDA: NVIDIA H100"`` or ``"CPU (2 threads)"``.

    With ``precision="bf16"`` (a resolved precision, see :func:`resolve_precision`),
    ``", bfloat16"`` is appended: ``"CPU (2 threads), bfloat16"``.
    """
    if device.type == "cuda":
        idx = device.index if device.index is not None else torch.cuda.current_device()
        text = f"CUDA: {torch.cuda.get_device_name(idx)}"
    elif device.type == "mps":
        text = "Apple MPS"
    else:
        text = f"CPU ({torch.get_num_threads()} threads)"
    return text + (", bfloat16" if precision == "bf16" else "")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """Return the CPU's feature flags from ``/proc/cpuinfo`` (read once).

    Empty where there is no such file (macOS, Windows) or it has no ``flags`` line
    (e.g. ARM, whose line is ``Features``).
    """
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return frozenset()
    for line in text.splitlines():
        if line.startswith("flags"):
            return frozenset(line.split(":", 1)[-1].split())
    return frozenset()


def cpu_bf16_native() -> bool:
    """Return True if this CPU computes bfloat16 natively (and PyTorch can use it).

    Native means Intel AMX (``amx_bf16``) or AVX-512 BF16 (``avx512_bf16``) in the CPU's
    flags, and PyTorch built with oneDNN. Elsewhere bfloat16 is emulated: on an AVX2 CPU
    (AMD EPYC, 2 threads) it was 3 to 4 times slower than float32, while with AMX (Intel
    Xeon, 2 threads) prediction was 2.2x and a training step 2.8x faster
    (``bench/cpu_bf16.py``, docs/benchmarks.md). False outside Linux: there is no cheap
    way to tell there, and float32 is never the slow choice.
    """
    if not torch.backends.mkldnn.is_available():
        return False
    return bool(cpu_flags() & BF16_FLAGS)


def resolve_precision(precision: str, device: torch.device, amp: bool | None = None) -> str:
    """Return the precision to compute in on ``device``.

    ``precision`` governs the CPU only; GPUs keep their mixed precision (``amp``).

    Parameters
    ----------
    precision : {"auto", "fp32", "bf16"}
        "auto": bfloat16 where the CPU computes it natively (:func:`cpu_bf16_native`),
        else float32; the environment variable ``NAPARI_UNET_PRECISION`` ("fp32" or
        "bf16") decides instead when set. "bf16": bfloat16 even where it is emulated
        (slower: see :func:`precision_note`). "fp32": float32.
    device : torch.device
    amp : bool or None
        Mixed precision (float16 autocast) on a GPU; None: on for CUDA, off for MPS.
        Ignored on the CPU.

    Returns
    -------
    str
        On the CPU "fp32" or "bf16"; on a GPU "amp" or "fp32".

    Raises
    ------
    NapariUnetError
        For a precision, or a ``NAPARI_UNET_PRECISION`` value, that is none of these.
    """
    p = (precision or "auto").lower()
    if p not in PRECISIONS:
        raise NapariUnetError(f"precision must be one of {PRECISIONS}, got {precision!r}.")
    if device.type != "cpu":
        on = device.type == "cuda" if amp is None else bool(amp)
        return "amp" if on else "fp32"
    if p == "auto":
        env = os.environ.get(PRECISION_ENV, "").strip().lower()
        if env not in ("", *PRECISIONS):
            raise NapariUnetError(
                f"{PRECISION_ENV} must be one of {PRECISIONS} (or unset), got {env!r}."
            )
        if env in ("fp32", "bf16"):
            return env
        return "bf16" if cpu_bf16_native() else "fp32"
    return p


def precision_note(precision: str, device: torch.device) -> str | None:
    """Return a warning when ``precision`` asks for something slow or without effect.

    That is "bf16" on a CPU without native bfloat16 (emulated: slower than float32), or
    a precision other than "auto" on a GPU (which ignores it). None otherwise.
    """
    p = (precision or "auto").lower()
    if p == "auto":
        return None
    if device.type != "cpu":
        return f"precision {p!r} applies to the CPU only: the GPU keeps its mixed precision"
    if p == "bf16" and not cpu_bf16_native():
        return (
            "bfloat16 was asked for, but this CPU has no native bfloat16 (AMX or AVX-512 "
            "BF16): it is emulated and slower than float32 (3-4x measured on an AVX2 CPU); "
            "precision 'auto' or 'fp32' is faster here"
        )
    return None


def compute_autocast(device: torch.device, precision: str):
    """Return the autocast context for a resolved ``precision`` (:func:`resolve_precision`).

    "bf16": ``torch.autocast("cpu", dtype=torch.bfloat16)``; "amp": the device's default
    autocast (float16 on CUDA); "fp32": none. Outputs of the network may then be
    bfloat16 or float16: callers convert them to float32 (losses, sigmoid, blending).
    """
    if precision == "bf16":
        return torch.autocast("cpu", dtype=torch.bfloat16)
    if precision == "amp":
        return torch.autocast(device.type)
    return contextlib.nullcontext()


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
