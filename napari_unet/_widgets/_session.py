"""The state the widgets of one viewer share: current model and training set.

Qt-free (psygnal signals), so it can be driven and tested without a viewer. The Train
widget puts its model here, Predict uses it, and Correct & retrain adds corrected label
images to the training set, so that fine-tuning on a new correction does not forget the
earlier ones.
"""

from __future__ import annotations

import time
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from psygnal import Signal

from napari_unet.core.corrections import SavedPair, to_sparse

if TYPE_CHECKING:
    from napari_unet.core.checkpoint import ModelBundle

#: ``layer.metadata`` key under which the widgets record what made a layer.
METADATA_KEY = "napari-unet"


#: One image with its (possibly partial) annotation: ``name``, ``image`` (channels-last if
#: it has channels), ``labels`` and ``sparse`` (True: 0 = not annotated, 1 = background,
#: >= 2 = objects). A pair with the same name replaces an older one. The same record as a
#: saved training set's (:mod:`napari_unet.core.corrections`).
TrainingPair = SavedPair

#: Fully annotated labels re-coded in the sparse convention (0 -> 1, k -> k + 1).
to_sparse_convention = to_sparse


@dataclass
class ModelInfo:
    """What the session knows about its current model (for display)."""

    source: str
    checkpoint: Path | None = None
    created: float = field(default_factory=time.time)


class Session:
    """Current model and training set shared by the napari-unet widgets of one viewer.

    Signals
    -------
    model_changed()
        A new model was set (trained, fine-tuned or loaded).
    training_set_changed()
        A pair was added or replaced, or the set was cleared.
    busy_changed(bool)
        Training started (True) or ended (False); only one training runs at a time.
    """

    model_changed = Signal()
    training_set_changed = Signal()
    busy_changed = Signal(bool)

    def __init__(self) -> None:
        self.bundle: ModelBundle | None = None
        self.model_info: ModelInfo | None = None
        self.training_set: dict[str, TrainingPair] = {}
        self._busy: str | None = None
        self._stop: Any = None
        self._untouched: weakref.WeakSet[Any] = weakref.WeakSet()
        self._baselines: weakref.WeakKeyDictionary[Any, np.ndarray] = weakref.WeakKeyDictionary()
        #: per image name, the checked regions already learned: (kind, vertices in the
        #: labels' pixel coordinates); a later round skips them, a saved training set keeps them
        self.learned_regions: dict[str, list[tuple[str, np.ndarray]]] = {}

    # ---- model -----------------------------------------------------------------
    def set_model(
        self, bundle: ModelBundle, *, source: str, checkpoint: Path | str | None = None
    ) -> None:
        """Make `bundle` the current model; `source` says where it came from (for display)."""
        self.bundle = bundle
        self.model_info = ModelInfo(
            source=source, checkpoint=Path(checkpoint) if checkpoint else None
        )
        self.model_changed.emit()

    def describe_model(self) -> str:
        """One line for the widgets: which model Predict and retraining would use."""
        if self.bundle is None or self.model_info is None:
            return "No model in this session yet: train one or load a model file."
        outputs = ", ".join(self.bundle.outputs)
        channels = self.bundle.in_channels
        text = f"{self.model_info.source} ({channels} input channel(s); outputs: {outputs})"
        if self.model_info.checkpoint is not None:
            from napari_unet.core.builtin import is_builtin

            if is_builtin(self.model_info.checkpoint):  # shipped, never written
                text += "\nShipped with napari-unet; retraining saves a copy in your models folder"
            else:
                text += f"\nSaved as {self.model_info.checkpoint}"
        return text

    # ---- training set ----------------------------------------------------------
    def add_training_pair(
        self, name: str, image: np.ndarray, labels: np.ndarray, *, sparse: bool = False
    ) -> None:
        """Add (or replace, by name) an annotated image in the training set.

        The arrays are copied, so painting on the layer later does not change what was
        added; an image with its channels first is stored channels-last.
        """
        from napari_unet.core.data import find_channel_axis

        image = np.array(image, copy=True)
        axis = find_channel_axis(image.shape, np.shape(labels))
        if axis is not None and axis != image.ndim - 1:
            image = np.ascontiguousarray(np.moveaxis(image, axis, -1))
        self.training_set[name] = TrainingPair(name, image, np.array(labels, copy=True), sparse)
        self.training_set_changed.emit()

    def add_learned_regions(self, name: str, regions: Sequence[tuple[str, np.ndarray]]) -> None:
        """Record checked regions as learned on image `name` (each region once)."""
        from napari_unet.core.corrections import region_signature

        known = self.learned_regions.setdefault(name, [])
        seen = {region_signature(kind, v) for kind, v in known}
        for kind, v in regions:
            signature = region_signature(kind, v)
            if signature not in seen:
                seen.add(signature)
                known.append((kind, np.asarray(v, dtype=float)))

    def clear_training_set(self) -> None:
        """Forget every collected pair.

        Which checked regions were learned is kept: the layers they were checked on may
        since have been replaced by new predictions, so they are never taken again.
        """
        self.training_set.clear()
        self.training_set_changed.emit()

    def training_data(
        self, extra: TrainingPair | Sequence[TrainingPair] | None = None
    ) -> tuple[list[str], list[np.ndarray], list[np.ndarray], bool]:
        """Names, images, labels and the sparse flag to train on the whole training set.

        Parameters
        ----------
        extra : TrainingPair or sequence of TrainingPair, optional
            Pairs to train on as well, each replacing the one of the same name (a new
            correction that joins the set only once training succeeded, or the pairs
            picked in the Train widget).

        Returns
        -------
        names, images, labels : lists
        sparse : bool
            When some pairs are sparse and others fully annotated, the fully annotated
            ones are re-coded in the sparse convention (see :func:`to_sparse_convention`),
            so that one training run can use them all.
        """
        pairs = dict(self.training_set)
        for pair in [extra] if isinstance(extra, TrainingPair) else extra or []:
            pairs.pop(pair.name, None)
            pairs[pair.name] = pair
        sparse = any(p.sparse for p in pairs.values())
        names = list(pairs)
        images = [p.image for p in pairs.values()]
        labels = [
            to_sparse_convention(p.labels) if sparse and not p.sparse else p.labels
            for p in pairs.values()
        ]
        return names, images, labels, sparse

    # ---- busy ------------------------------------------------------------------
    @property
    def busy(self) -> str | None:
        """What is training right now (a short text), or None."""
        return self._busy

    def begin(self, what: str, stop: Any = None) -> None:
        """Mark the session busy; raises RuntimeError if it already is.

        `stop` (a :class:`threading.Event`) is what :meth:`request_stop` sets: the job
        belongs to the session, so a panel opened later can stop it too.
        """
        if self._busy is not None:
            raise RuntimeError(f"Already busy: {self._busy}")
        self._busy = what
        self._stop = stop
        self.busy_changed.emit(True)

    def request_stop(self) -> bool:
        """Ask the running job to stop; return False if there is none that can be stopped."""
        if self._busy is None or self._stop is None or self._stop.is_set():
            return False
        self._stop.set()
        return True

    @property
    def stoppable(self) -> bool:
        """True while a job runs that :meth:`request_stop` can still stop."""
        return self._busy is not None and self._stop is not None and not self._stop.is_set()

    def end(self) -> None:
        """Mark the session idle again."""
        self._stop = None
        if self._busy is not None:
            self._busy = None
            self.busy_changed.emit(False)

    # ---- result layers ---------------------------------------------------------
    def track_result(self, layer: Any) -> None:
        """Remember that `layer` holds an untouched result that may be replaced.

        Painting on it (napari's ``paint`` event: brush, eraser, fill) makes it the
        user's: :meth:`is_replaceable` is then False.
        """
        layer = _unwrap(layer)
        self._untouched.add(layer)
        if not hasattr(layer.events, "paint"):  # only Labels layers can be painted
            return
        ref = weakref.ref(self)

        def _on_paint(event: Any = None) -> None:
            session = ref()
            if session is not None:
                session._untouched.discard(layer)

        layer.events.paint.connect(_on_paint)

    def is_replaceable(self, layer: Any) -> bool:
        """Return True if `layer` is a result no one has painted on since it was made."""
        return _unwrap(layer) in self._untouched

    def record_baseline(self, layer: Any, data: np.ndarray) -> None:
        """Remember what a prediction put into `layer`, to tell the user's edits later."""
        self._baselines[_unwrap(layer)] = np.array(data, copy=True)

    def baseline(self, layer: Any) -> np.ndarray | None:
        """Return what napari-unet last put into `layer` (None: the user made or loaded it)."""
        return self._baselines.get(_unwrap(layer))


_SESSIONS: weakref.WeakKeyDictionary[Any, Session] = weakref.WeakKeyDictionary()


def session_for(viewer: Any) -> Session:
    """Return the session of `viewer`, creating it on first use.

    The widgets of one viewer share it; it is held weakly, so it goes away with the
    viewer.
    """
    viewer = _unwrap(viewer)
    session = _SESSIONS.get(viewer)
    if session is None:
        session = _SESSIONS[viewer] = Session()
    return session


def _unwrap(obj: Any) -> Any:
    """Return the object behind napari's plugin proxy (made anew on every access)."""
    return getattr(obj, "__wrapped__", obj)
