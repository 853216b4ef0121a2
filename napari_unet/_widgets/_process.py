"""Run a core generator in a child process and relay it as a generator here (Qt-free).

Why: a generator run in a worker *thread* shares the interpreter lock with the
viewer's event loop. Importing torch (its extension's initialisation holds the lock
for hundreds of milliseconds), preparing the training data and the Python side of
every step or tile then freeze the viewer for up to half a second at a time (measured
with ``bench/viewer_lag.py``). In a child process none of that touches the viewer's
interpreter: the worker thread only waits on a pipe.

The child is started with the ``spawn`` method (safe with Qt and torch threads, the
same on every OS), at a slightly lower scheduling priority than the viewer, from this
module's :func:`_child_main`: it never runs the user's script again (see
:func:`_main_module_hidden`). What the generator yields is sent back and yielded here;
its return value is returned; an exception it raises is raised here (same type and
message, the child's traceback in the message's notes). Setting ``stop`` here sets
the child's stop event. If the child dies (killed, out of memory),
:class:`ChildProcessDied` is raised.

What crosses the process boundary (:func:`_pack`, :func:`_send`, :func:`_receive`):
every message is pickled (protocol 5) with its large arrays *out of band*; those
travel in pieces of at most :data:`PIECE_BYTES` straight into arrays allocated on the
receiving side. The worker thread receiving a 4096 x 4096 prediction thus holds the
interpreter lock for about a millisecond at a time, never for a whole copy, and this
process holds each array of the result once (no pickle of the whole result beside
it). The arguments travel the same way to the child, without a copy here.

A model (``ModelBundle``) that a child sends arrives here as a :class:`LazyBundle`:
its metadata at once, its weights unpickled (torch imported) only when something in
this process uses the model itself; sent to another child it travels as it came. So
predicting with a model file or a built-in model never imports torch in the viewer's
process.
"""

from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import sys
import threading
import traceback
import types
from collections.abc import Generator
from typing import Any

import numpy as np

from napari_unet.core.errors import NapariUnetError

#: Held while ``__main__`` is swapped for a stand-in (see :func:`_main_module_hidden`).
_MAIN_LOCK = threading.Lock()

#: How often (s) the worker thread checks the stop event and the child's health.
POLL_S = 0.05
#: Buffers (array data) of at least this many bytes travel out of band, in pieces.
OUT_OF_BAND_BYTES = 1 << 16
#: Largest piece of a buffer sent in one message (about a millisecond to copy).
PIECE_BYTES = 4 << 20
#: What :class:`ChildProcessDied` suggests unless the caller says otherwise.
TRAIN_ADVICE = "try a smaller batch or patch size."


class ChildProcessDied(NapariUnetError):
    """The process doing the work ended without a result (killed, or out of memory)."""


class NotSendable(NapariUnetError):
    """The arguments cannot be sent to a child process (neither pickle nor cloudpickle can)."""


def run_in_child(
    target: str,
    *args: Any,
    stop: threading.Event | None = None,
    advice: str = TRAIN_ADVICE,
    **kwargs: Any,
) -> Generator[Any, None, Any]:
    """Run the generator function ``target`` in a child process; relay what it yields.

    Parameters
    ----------
    target : str
        ``"module:function"`` of a generator function taking ``stop=`` (an object
        with ``is_set()``); it must be importable without Qt.
    *args, **kwargs
        Passed to it (pickled: numpy arrays and dask arrays, dicts, model bundles;
        what the standard pickler refuses, e.g. a dask graph holding a lambda, is
        pickled with cloudpickle).
    stop : threading.Event, optional
        Set it to ask the child to stop (its generator sees its own stop event set).
    advice : str
        The end of the message of :class:`ChildProcessDied`: what the user may try.

    Yields
    ------
    What ``target`` yields.

    Returns
    -------
    What ``target`` returns.

    Raises
    ------
    NotSendable
        Before anything is started, when the arguments cannot be pickled.
    ChildProcessDied
        The child ended without a result.
    """
    import multiprocessing

    arguments = _pack_arguments((args, kwargs))  # may raise NotSendable: nothing started yet
    ctx = multiprocessing.get_context("spawn")
    here, there = ctx.Pipe(duplex=True)
    child_stop = ctx.Event()
    proc = ctx.Process(
        target=_child_main,
        args=(target, there, child_stop),
        name=f"napari-unet {target.rsplit(':', 1)[-1]}",
        daemon=True,
    )
    try:
        with _main_module_hidden():
            proc.start()
    finally:
        there.close()  # only the child holds its end now: its exit reads as end of file

    def died() -> ChildProcessDied:
        proc.join(timeout=1.0)
        return ChildProcessDied(
            f"The process doing the work ended unexpectedly (exit code {proc.exitcode}); "
            f"it may have run out of memory. Nothing was changed; {advice}"
        )

    try:
        try:
            _send(here, arguments)
        except OSError:  # it died before reading them
            raise died() from None
        del arguments
        while True:
            if stop is not None and stop.is_set() and not child_stop.is_set():
                child_stop.set()
            if not here.poll(POLL_S):
                if not proc.is_alive() and not here.poll(0):
                    raise died()
                continue
            try:
                kind, value = _receive(here)
            except (EOFError, OSError):
                raise died() from None
            if kind == "yield":
                yield value
            elif kind == "return":
                return value
            else:
                error, text = value
                if hasattr(error, "add_note"):
                    error.add_note(f"In the child process:\n{text}")
                raise error
    finally:
        child_stop.set()
        proc.join(timeout=30)
        if proc.is_alive():  # pragma: no cover - it did not stop in time
            proc.terminate()
            proc.join(timeout=5)
        here.close()


@contextlib.contextmanager
def _main_module_hidden() -> Generator[None, None, None]:
    """Start a child without it importing the parent's ``__main__`` module again.

    multiprocessing's ``spawn`` re-imports the script that started the parent (or runs
    ``napari``'s ``__main__``; ``napari script.py`` even points ``__main__`` at the
    script) in every child. A user's script without an ``if __name__ == "__main__":``
    guard then opens a second viewer and starts a second job in the child, which fails
    in multiprocessing's bootstrapping and leaves training hanging at "Preparing...".
    The child needs nothing from ``__main__``: the target is given as
    "module:function" and its arguments are sent after it has started. So a bare
    module stands in for ``__main__`` while the child is started (a few milliseconds:
    the arguments are not part of the start).
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


def _child_main(target: str, conn: Any, stop: Any) -> None:
    """Entry point of the child process: receive the arguments, run, send everything back."""
    try:
        os.nice(5)  # the viewer's event loop comes first
    except (AttributeError, OSError):  # pragma: no cover - Windows / not permitted
        pass
    try:
        args, kwargs = _receive(conn)
        module, name = target.split(":")
        func = getattr(importlib.import_module(module), name)
        gen = func(*args, stop=stop, **kwargs)
        while True:
            try:
                item = next(gen)
            except StopIteration as done:
                _send(conn, _pack(("return", done.value), _ChildPickler))
                break
            _send(conn, _pack(("yield", item), _ChildPickler))
    except BaseException as error:  # sent to the parent, which raises it
        text = traceback.format_exc()
        with contextlib.suppress(OSError):  # the parent is gone: nobody to tell
            _send(conn, _pack(("error", (_sendable(error), text))))
    finally:
        conn.close()


def _sendable(error: BaseException) -> BaseException:
    """`error`, or a RuntimeError naming it when the parent could not (or should not) load it.

    An exception of a torch type would import torch in the viewer's process.
    """
    if type(error).__module__.split(".")[0] != "torch":
        try:
            pickle.loads(pickle.dumps(error))
            return error
        except Exception:  # noqa: BLE001 - any exception that cannot travel is replaced
            pass
    return RuntimeError(f"{type(error).__name__}: {error}")


# ---- models ------------------------------------------------------------------------------
class LazyBundle:
    """A model sent by a child process: its metadata now, its weights when first used.

    Unpickling a ``ModelBundle`` imports torch, which holds the interpreter lock (and
    so freezes the viewer) for a second or more the first time; a child sends every
    ModelBundle as this instead. The widgets read ``meta``, ``in_channels`` and
    ``outputs`` without loading anything; ``model``, ``spec``, ``device`` and ``to``
    load the model (:meth:`load`, torch imported then). Sent to a child process it
    arrives there as the ModelBundle it was.

    Parameters
    ----------
    data : bytes-like
        The ModelBundle, pickled.
    meta : dict
        Its metadata (the same dict as the loaded model's).
    in_channels : int
    """

    def __init__(self, data: Any, meta: dict, in_channels: int) -> None:
        self._data = data
        self._meta = meta
        self.in_channels = int(in_channels)
        self._bundle: Any = None

    @property
    def meta(self) -> dict:
        """The model's metadata (``outputs``, ``normalisation``, ``postprocess``, ...)."""
        return self._meta

    @property
    def outputs(self) -> list[str]:
        """Names of the output maps, e.g. ``["foreground", "boundary"]``."""
        return list(self._meta["outputs"])

    @property
    def loaded(self) -> bool:
        """Whether the model was unpickled here (and torch imported)."""
        return self._bundle is not None

    def load(self) -> Any:
        """Return the ``ModelBundle`` (unpickled the first time: imports torch)."""
        if self._bundle is None:
            self._bundle = _unpickle_bundle(self._data, self._meta)
        return self._bundle

    @property
    def model(self) -> Any:
        """The UNet (loads the model)."""
        return self.load().model

    @property
    def spec(self) -> Any:
        """The architecture (loads the model)."""
        return self.load().spec

    @property
    def device(self) -> Any:
        """Device the weights are on (loads the model)."""
        return self.load().device

    def to(self, device: Any) -> Any:
        """Load the model, move it to `device` and return the ``ModelBundle``."""
        return self.load().to(device)

    def __reduce_ex__(self, protocol: int) -> tuple:
        data = pickle.PickleBuffer(self._data) if protocol >= 5 else bytes(self._data)
        return (_unpickle_bundle, (data, self._meta))

    def __repr__(self) -> str:
        state = "loaded" if self.loaded else "not loaded"
        return f"LazyBundle(outputs={self.outputs}, in_channels={self.in_channels}, {state})"


def _unpickle_bundle(data: Any, meta: dict) -> Any:
    bundle = pickle.loads(data)
    bundle.meta = meta  # one dict, whichever object is used
    return bundle


def as_model_bundle(bundle: Any) -> Any:
    """Return the ``ModelBundle`` behind `bundle` (a :class:`LazyBundle` is loaded)."""
    return bundle.load() if isinstance(bundle, LazyBundle) else bundle


def _is_model_bundle(obj: Any) -> bool:
    checkpoint = sys.modules.get("napari_unet.core.checkpoint")  # no bundle without it
    return checkpoint is not None and isinstance(obj, checkpoint.ModelBundle)


class _ChildPickler(pickle.Pickler):
    """Pickles what a child sends: a ModelBundle becomes a :class:`LazyBundle` there."""

    def reducer_override(self, obj: Any) -> Any:
        if _is_model_bundle(obj):
            obj.to("cpu")  # the viewer's process may have no GPU; this process ends soon
            data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
            return (LazyBundle, (pickle.PickleBuffer(data), obj.meta, obj.in_channels))
        return NotImplemented


# ---- messages ----------------------------------------------------------------------------
def _pack(value: Any, pickler: type = pickle.Pickler) -> tuple[bytes, list[memoryview]]:
    """Pickle `value`; its buffers of :data:`OUT_OF_BAND_BYTES` or more are left out.

    Returns the pickle and those buffers (views of the arrays: nothing is copied).
    """
    buffers: list[memoryview] = []

    def out_of_band(buffer: pickle.PickleBuffer) -> bool:
        try:
            raw = buffer.raw()
        except BufferError:  # not contiguous: in the pickle
            return True
        if raw.nbytes < OUT_OF_BAND_BYTES:
            return True
        buffers.append(raw)
        return False

    stream = io.BytesIO()
    pickler(stream, protocol=5, buffer_callback=out_of_band).dump(value)
    return stream.getvalue(), buffers


def _pack_arguments(value: Any) -> tuple[bytes, list[memoryview]]:
    """:func:`_pack` the arguments, with cloudpickle for what pickle refuses."""
    try:
        return _pack(value)
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        reason = error
    try:
        import cloudpickle  # dask's dependency: pickles lambdas and local functions too

        return _pack(value, cloudpickle.CloudPickler)
    except ImportError:
        pass
    except (pickle.PicklingError, TypeError, AttributeError) as error:
        reason = error
    raise NotSendable(
        f"the data cannot be sent to another process ({type(reason).__name__}: {reason})"
    ) from reason


def _send(conn: Any, message: tuple[bytes, list[memoryview]]) -> None:
    """Send a packed message: the buffers' sizes, the pickle, then each buffer in pieces."""
    data, buffers = message
    conn.send_bytes(pickle.dumps([raw.nbytes for raw in buffers]))
    conn.send_bytes(data)
    for raw in buffers:
        for start in range(0, raw.nbytes, PIECE_BYTES):
            conn.send_bytes(raw[start : start + PIECE_BYTES])


def _receive(conn: Any) -> Any:
    """Receive a message of :func:`_send`; its arrays are views of buffers allocated here."""
    sizes = pickle.loads(conn.recv_bytes())
    data = conn.recv_bytes()
    buffers = []
    for size in sizes:
        buffer = np.empty(size, np.uint8)  # not zeroed: every byte is written below
        received = 0
        while received < size:
            received += conn.recv_bytes_into(buffer, received)
        buffers.append(buffer)
    return pickle.loads(data, buffers=buffers)
