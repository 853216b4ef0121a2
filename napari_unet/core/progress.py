"""Running the core's generators to the end.

The long computations of the core (:func:`~napari_unet.core.train.iter_train`,
:func:`~napari_unet.core.predict.iter_predict`, ...) are generators that yield progress
and return their result; the widgets run them in a worker, and everything else (the
plain functions ``train`` and ``predict``, the command line, the demo, the benchmarks)
drains them with :func:`drain`. Standard library only.
"""

from __future__ import annotations

from collections.abc import Callable, Generator
from typing import Any, TypeVar

__all__ = ["drain"]

R = TypeVar("R")


def drain(gen: Generator[Any, Any, R], on_progress: Callable[[Any], Any] | None = None) -> R:
    """Run a generator to the end and return what it returns.

    Parameters
    ----------
    gen : generator
        Yields progress, returns the result.
    on_progress : callable, optional
        Called with everything `gen` yields, in order.

    Examples
    --------
    >>> def count():
    ...     yield 1
    ...     yield 2
    ...     return "done"
    >>> seen = []
    >>> drain(count(), seen.append), seen
    ('done', [1, 2])
    """
    while True:
        try:
            item = next(gen)
        except StopIteration as end:
            return end.value
        if on_progress is not None:
            on_progress(item)
