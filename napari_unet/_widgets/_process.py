"""Run a core generator in a child process and relay it as a generator here (Qt-free).

Why: a generator run in a worker *thread* shares the interpreter lock with the
viewer's event loop. Importing torch (its extension's initialisation holds the lock
for hundreds of milliseconds), preparing the training data and the Python side of
every step then freeze the viewer for up to half a second at a time (measured with
``bench/viewer_lag.py``). In a child process none of that touches the viewer's
interpreter: the worker thread only waits on a queue.

The child is started with the ``spawn`` method (safe with Qt and torch threads, the
same on every OS), at a slightly lower scheduling priority than the viewer. What the
generator yields is sent back through a queue and yielded here; its return value is
returned; an exception it raises is raised here (same type and message, the child's
traceback in the message's notes). Setting ``stop`` here sets the child's stop event.
If the child dies (killed, out of memory), :class:`ChildProcessDied` is raised.
"""

from __future__ import annotations

import contextlib
import importlib
import os
import pickle
import queue as queue_module
import sys
import threading
import traceback
import types
from collections.abc import Generator
from typing import Any

from napari_unet.core.errors import NapariUnetError

#: Held while ``__main__`` is swapped for a stand-in (see :func:`_main_module_hidden`).
_MAIN_LOCK = threading.Lock()

#: How often (s) the worker thread checks the stop event and the child's health.
POLL_S = 0.05


class ChildProcessDied(NapariUnetError):
    """The process doing the work ended without a result (killed, or out of memory)."""


def run_in_child(
    target: str,
    *args: Any,
    stop: threading.Event | None = None,
    **kwargs: Any,
) -> Generator[Any, None, Any]:
    """Run the generator function ``target`` in a child process; relay what it yields.

    Parameters
    ----------
    target : str
        ``"module:function"`` of a generator function taking ``stop=`` (an object
        with ``is_set()``); it must be importable without Qt.
    *args, **kwargs
        Passed to it (pickled: numpy arrays, dicts, model bundles).
    stop : threading.Event, optional
        Set it to ask the child to stop (its generator sees its own stop event set).

    Yields
    ------
    What ``target`` yields.

    Returns
    -------
    What ``target`` returns.
    """
    import multiprocessing

    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    child_stop = ctx.Event()
    # pickled here with the standard pickler: multiprocessing's would move torch tensors
    # (a model to fine-tune) into shared memory that vanishes with the process
    payload = pickle.dumps((args, kwargs), protocol=pickle.HIGHEST_PROTOCOL)
    proc = ctx.Process(
        target=_child_main,
        args=(target, payload, results, child_stop),
        name=f"napari-unet {target.rsplit(':', 1)[-1]}",
        daemon=True,
    )
    with _main_module_hidden():
        proc.start()
    try:
        while True:
            if stop is not None and stop.is_set() and not child_stop.is_set():
                child_stop.set()
            try:
                kind, data = results.get(timeout=POLL_S)
            except queue_module.Empty:
                if not proc.is_alive():
                    try:  # it may have put its last message just before exiting
                        kind, data = results.get(timeout=1.0)
                    except queue_module.Empty:
                        raise ChildProcessDied(
                            f"The process doing the work ended unexpectedly (exit code "
                            f"{proc.exitcode}); it may have run out of memory. Nothing was "
                            "changed; try a smaller batch or patch size."
                        ) from None
                else:
                    continue
            payload = pickle.loads(data)
            if kind == "yield":
                yield payload
            elif kind == "return":
                return payload
            else:
                error, text = payload
                if hasattr(error, "add_note"):
                    error.add_note(f"In the child process:\n{text}")
                raise error
    finally:
        child_stop.set()
        proc.join(timeout=30)
        if proc.is_alive():  # pragma: no cover - it did not stop in time
            proc.terminate()
            proc.join(timeout=5)
        results.close()


@contextlib.contextmanager
def _main_module_hidden() -> Generator[None, None, None]:
    """Start a child without it importing the parent's ``__main__`` module again.

    multiprocessing's ``spawn`` re-imports the script that started the parent (or runs
    ``napari``'s ``__main__``) in every child. A user's script without an
    ``if __name__ == "__main__":`` guard then opens a second viewer and starts a second
    job in the child, which fails in multiprocessing's bootstrapping and leaves training
    hanging at "Preparing...". The child needs nothing from ``__main__``: the target is
    given as "module:function" and its arguments are pickled with the standard pickler.
    So a bare module stands in for ``__main__`` while the child is started.
    """
    with _MAIN_LOCK:  # two jobs started at once must not keep the stand-in for good
        real = sys.modules.get("__main__")
        stand_in = types.ModuleType("__main__")
        sys.modules["__main__"] = stand_in
        try:
            yield
        finally:
            if real is not None and sys.modules.get("__main__") is stand_in:
                sys.modules["__main__"] = real


def _child_main(target: str, payload: bytes, results, stop) -> None:
    """Entry point of the child process: run the generator, send everything back.

    Every message is pickled here with the standard pickler (see :func:`run_in_child`).
    """

    def send(kind: str, value: Any) -> None:
        results.put((kind, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)))

    try:
        os.nice(5)  # the viewer's event loop comes first
    except (AttributeError, OSError):  # pragma: no cover - Windows / not permitted
        pass
    try:
        module, name = target.split(":")
        func = getattr(importlib.import_module(module), name)
        args, kwargs = pickle.loads(payload)
        gen = func(*args, stop=stop, **kwargs)
        while True:
            try:
                item = next(gen)
            except StopIteration as done:
                send("return", done.value)
                break
            send("yield", item)
    except BaseException as error:  # sent to the parent, which raises it
        text = traceback.format_exc()
        try:
            pickle.dumps(error)
        except Exception:  # noqa: BLE001 - an exception that cannot travel
            error = RuntimeError(f"{type(error).__name__}: {error}")
        send("error", (error, text))
    finally:
        results.close()
        results.join_thread()  # make sure everything reached the parent
