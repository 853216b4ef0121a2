"""Exceptions raised by the core for problems a user can fix; out-of-memory errors."""


class NapariUnetError(ValueError):
    """A problem with the user's input: the message says what is wrong and what to do.

    The command line prints it as one line and exits non-zero; the widgets show
    it as a napari notification. Nothing the user had is changed when it is raised.
    """


class CheckpointError(NapariUnetError):
    """A model file that cannot be loaded (truncated, foreign, incompatible or unsafe)."""


#: Phrases in the errors PyTorch raises when an allocation fails (CUDA, MPS, CPU).
_OOM_PHRASES = ("out of memory", "can't allocate memory", "failed to allocate")


def is_out_of_memory(error: BaseException) -> bool:
    """Return True if `error` says that the device (or the CPU) ran out of memory.

    ``torch.OutOfMemoryError`` on CUDA (recognised by its name, so that this module
    never imports torch: the widgets ask it in the viewer's process); MPS and the CPU
    allocator raise plain ``RuntimeError`` with a message; Python raises
    ``MemoryError``.

    Examples
    --------
    >>> is_out_of_memory(RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"))
    True
    >>> is_out_of_memory(ValueError("out of memory"))
    False
    """
    if any(cls.__name__ == "OutOfMemoryError" for cls in type(error).__mro__):
        return True
    if isinstance(error, MemoryError):
        return True
    if not isinstance(error, RuntimeError):
        return False
    text = str(error).lower()
    return any(p in text for p in _OOM_PHRASES)
