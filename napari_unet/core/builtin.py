"""Built-in models: trained models shipped inside the package, picked by name.

The models live in a folder next to this package, ``napari_unet/models/``, as
checkpoints in the usual safe format (:mod:`napari_unet.core.checkpoint`, weights
possibly stored as float16), with an index ``builtin.json``: a JSON list of entries ::

    [
      {
        "name": "nuclei",
        "title": "Nuclei (built-in, fluorescence / brightfield / H&E)",
        "file": "nuclei.pt",
        "channels": 3,
        "description": "What it was trained on and what it segments.",
        "sha256": "<hex digest of the file>",
        "object_diameter": 24.0
      }
    ]

``name`` is what the command line takes (``--model nuclei``), ``title`` what the
widgets show, ``file`` the checkpoint in the same folder, ``channels`` the input
channels of the model (grey images fit any model; colour ones need 3), ``sha256`` the
checksum verified before every load, and ``object_diameter`` (optional) the object
size in pixels the model was trained at, as stored in its metadata. An empty or
missing index means no built-in model is installed: everything works as before.

The environment variable ``NAPARI_UNET_MODELS_DIR`` points at another folder with the
same layout, used instead of the package's (tests install tiny models there; a site
can keep its own set there). :func:`napari_unet.core.checkpoint.install_model` writes a
model and its index entry.

A built-in file is never written by napari-unet: :func:`check_not_builtin` refuses
every save over one (fine-tuning starts from a copy and saves elsewhere).

Importing this module imports neither torch nor any GUI package.
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from napari_unet.core.errors import CheckpointError, NapariUnetError

if TYPE_CHECKING:
    import numpy as np

#: The package's own folder of built-in models.
PACKAGE_MODELS_DIR = Path(__file__).resolve().parents[1] / "models"
#: The index file in a models folder.
INDEX_NAME = "builtin.json"
#: Environment variable naming another models folder (same layout), used instead.
ENV_VAR = "NAPARI_UNET_MODELS_DIR"
_NAME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789-_.")


@dataclass(frozen=True)
class BuiltinModel:
    """One entry of a models folder's index.

    Attributes
    ----------
    name : str
        Short name, as the command line takes it (``--model nuclei``).
    title : str
        Readable name the widgets show.
    file : str
        Checkpoint file name, in ``folder``.
    channels : int
        Input channels of the model.
    description : str
        One or two sentences on what it was trained on.
    sha256 : str
        Hex SHA-256 of the file (empty: not checked).
    object_diameter : float or None
        Object diameter (pixels) the model was trained at, when it has one.
    folder : Path
        The models folder holding ``file``.
    replay : tuple of str
        Shipped samples (:data:`napari_unet.samples.SAMPLE_NAMES`) that were part of
        the model's training data: Correct & retrain replays them so that a fine-tune
        does not forget what the model knew (see :func:`replay_data`).
    """

    name: str
    title: str
    file: str
    channels: int
    description: str
    sha256: str
    object_diameter: float | None
    folder: Path
    replay: tuple[str, ...] = ()

    @property
    def path(self) -> Path:
        """The checkpoint file."""
        return self.folder / self.file

    @property
    def size_bytes(self) -> int:
        """Size of the checkpoint file in bytes (0 when it is missing)."""
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def fits(self, channels: int) -> bool:
        """Return True if an image with `channels` channels can use (or fine-tune) the model."""
        return channels in (1, self.channels)

    def to_json(self) -> dict[str, Any]:
        """Return the index entry (without the folder)."""
        entry = asdict(self)
        entry.pop("folder")
        if entry["object_diameter"] is None:
            entry.pop("object_diameter")
        entry["replay"] = list(entry["replay"])
        if not entry["replay"]:
            entry.pop("replay")
        return entry


def models_dir() -> Path:
    """Return the models folder: ``$NAPARI_UNET_MODELS_DIR`` if set, else the package's."""
    env = os.environ.get(ENV_VAR, "").strip()
    return Path(env).expanduser() if env else PACKAGE_MODELS_DIR


def _entry(raw: Any, folder: Path, index: Path) -> BuiltinModel:
    """Check one index entry; raise NapariUnetError naming what is wrong."""
    if not isinstance(raw, dict):
        raise NapariUnetError(f"{index}: each entry must be a JSON object, got {raw!r}.")
    name, file = raw.get("name"), raw.get("file")
    if not isinstance(name, str) or not name or not set(name) <= _NAME_CHARS:
        raise NapariUnetError(
            f"{index}: 'name' must be a short lower-case name (a-z, 0-9, -, _, .), got {name!r}."
        )
    if not isinstance(file, str) or not file or Path(file).name != file:
        raise NapariUnetError(
            f"{index}: entry {name!r}: 'file' must be a file name in {folder}, got {file!r}."
        )
    channels = raw.get("channels")
    if not isinstance(channels, int) or isinstance(channels, bool) or channels < 1:
        raise NapariUnetError(
            f"{index}: entry {name!r}: 'channels' must be a positive whole number, got "
            f"{channels!r}."
        )
    diameter = raw.get("object_diameter")
    if diameter is not None and (
        isinstance(diameter, bool) or not isinstance(diameter, (int, float)) or diameter <= 0
    ):
        raise NapariUnetError(
            f"{index}: entry {name!r}: 'object_diameter' must be a positive number, got "
            f"{diameter!r}."
        )
    sha = raw.get("sha256", "")
    if not isinstance(sha, str) or (sha and len(sha) != 64):
        raise NapariUnetError(f"{index}: entry {name!r}: 'sha256' must be 64 hex digits.")
    from napari_unet.samples import SAMPLE_NAMES

    replay = raw.get("replay", [])
    if not isinstance(replay, list) or not set(replay) <= set(SAMPLE_NAMES):
        raise NapariUnetError(
            f"{index}: entry {name!r}: 'replay' must be a list of shipped sample names "
            f"({', '.join(SAMPLE_NAMES)}), got {replay!r}."
        )
    return BuiltinModel(
        name=name,
        title=str(raw.get("title") or name),
        file=file,
        channels=channels,
        description=str(raw.get("description", "")),
        sha256=sha.lower(),
        object_diameter=float(diameter) if diameter is not None else None,
        folder=folder,
        replay=tuple(replay),
    )


def read_index(folder: str | Path | None = None, *, strict: bool = True) -> list[BuiltinModel]:
    """Return the entries of a models folder's index, in its order.

    Parameters
    ----------
    folder : str or Path, optional
        The models folder (default :func:`models_dir`).
    strict : bool
        True: a malformed index, a malformed entry, a repeated name or a listed file that
        is missing raises. False: those are left out with a warning.

    Returns
    -------
    list of BuiltinModel
        Empty when the index is missing or lists nothing.

    Raises
    ------
    NapariUnetError
        With ``strict``, what is wrong with the index.
    """
    folder = Path(folder) if folder is not None else models_dir()
    index = folder / INDEX_NAME
    if not index.is_file():
        return []

    def problem(message: str) -> None:
        if strict:
            raise NapariUnetError(message)
        warnings.warn(f"built-in models: {message}", stacklevel=3)

    try:
        raw = json.loads(index.read_text(encoding="utf-8") or "[]")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        problem(f"the index {index} cannot be read ({exc}); no built-in model is offered.")
        return []
    if not isinstance(raw, list):
        problem(f"the index {index} must hold a JSON list of models; no built-in model is offered.")
        return []
    entries: list[BuiltinModel] = []
    for item in raw:
        try:
            entry = _entry(item, folder, index)
        except NapariUnetError as exc:
            problem(str(exc))
            continue
        if any(e.name == entry.name for e in entries):
            problem(f"{index}: the name {entry.name!r} is listed twice; the first is used.")
            continue
        if not entry.path.is_file():
            problem(f"{index}: the file of {entry.name!r}, {entry.path}, is missing.")
            continue
        entries.append(entry)
    return entries


def list_models(folder: str | Path | None = None) -> list[BuiltinModel]:
    """Return the built-in models that are installed (empty when there are none).

    Never raises: a damaged index or a missing file is left out with a warning, so that
    the widgets and the command line work without built-in models.
    """
    return read_index(folder, strict=False)


def get_model(name: str, folder: str | Path | None = None) -> BuiltinModel | None:
    """Return the built-in model called `name`, or None."""
    return next((m for m in list_models(folder) if m.name == name), None)


def _names_text(models: list[BuiltinModel]) -> str:
    if not models:
        return "no built-in model is installed"
    return "built-in models: " + ", ".join(m.name for m in models)


def model_path(name: str, folder: str | Path | None = None) -> Path:
    """Return the checkpoint file of the built-in model `name`.

    Raises
    ------
    NapariUnetError
        No built-in model has that name (the message lists the names).
    """
    model = get_model(name, folder)
    if model is None:
        raise NapariUnetError(
            f"There is no built-in model named {name!r} ({_names_text(list_models(folder))}); "
            "`napari-unet models` lists them."
        )
    return model.path


def resolve_model(name_or_path: str | os.PathLike[str], *, must_exist: bool = True) -> Path:
    """Return the model file meant by a built-in model's name or a path.

    Parameters
    ----------
    name_or_path : str or path-like
        The name of a built-in model (``"nuclei"``), else a path to a model file.
    must_exist : bool
        When True, a path that names no file (and no built-in model) raises.

    Returns
    -------
    Path

    Raises
    ------
    CheckpointError
        With ``must_exist``: neither a built-in model nor an existing file; the message
        lists the built-in models.
    """
    text = os.fspath(name_or_path)
    models = list_models()
    for model in models:
        if text == model.name:
            return model.path
    path = Path(text).expanduser()
    if must_exist and not path.exists() and not path.is_symlink():
        raise CheckpointError(
            f"Model file {path} does not exist, and {text!r} is not the name of a built-in "
            f"model ({_names_text(models)}); give a model file saved by napari-unet (.pt) or "
            "a built-in model's name."
        )
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except (OSError, RuntimeError):
        return False


def builtin_entry(path: str | os.PathLike[str]) -> BuiltinModel | None:
    """Return the built-in model whose file `path` is (any models folder), or None."""
    path = Path(path).expanduser()
    folders = {models_dir(), PACKAGE_MODELS_DIR}
    for folder in folders:
        for model in read_index(folder, strict=False) if (folder / INDEX_NAME).is_file() else []:
            if _same_file(path, model.path):
                return model
    return None


def is_builtin(path: str | os.PathLike[str]) -> bool:
    """Return True if `path` is the file of a built-in model (never to be written)."""
    return builtin_entry(path) is not None


def check_not_builtin(path: str | os.PathLike[str]) -> None:
    """Refuse to write a model over a built-in model's file.

    Raises
    ------
    NapariUnetError
        `path` is a built-in model's file.
    """
    model = builtin_entry(path)
    if model is not None:
        raise NapariUnetError(
            f"{path} is the built-in model {model.name!r}, which is never overwritten: save "
            "the model under another name (fine-tuning starts from a copy of it)."
        )


def file_sha256(path: str | os.PathLike[str]) -> str:
    """Return the hex SHA-256 digest of a file."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_builtin(path: str | os.PathLike[str]) -> BuiltinModel | None:
    """Check a built-in model's file against its index checksum.

    Returns
    -------
    BuiltinModel or None
        The entry when `path` is a built-in model's file, else None (nothing checked).

    Raises
    ------
    CheckpointError
        The file's checksum differs from the index's: the file is damaged or was replaced.
    """
    model = builtin_entry(path)
    if model is None or not model.sha256:
        return model
    actual = file_sha256(model.path)
    if actual != model.sha256:
        raise CheckpointError(
            f"The built-in model {model.name!r} ({model.path}) is damaged: its SHA-256 "
            f"checksum is {actual[:12]}..., the index says {model.sha256[:12]}.... Reinstall "
            "napari-unet-trainer (pip install --force-reinstall napari-unet-trainer)."
        )
    return model


def index_entry(fields: dict[str, Any], folder: str | Path) -> BuiltinModel:
    """Return a checked index entry for a model file in ``folder`` (not written yet).

    Raises
    ------
    NapariUnetError
        Naming what is wrong with ``fields`` (as in an index).
    """
    folder = Path(folder)
    return _entry(fields, folder, folder / INDEX_NAME)


def add_to_index(entry: BuiltinModel) -> BuiltinModel:
    """List a model file in its folder's index, with the file's SHA-256; return the entry.

    The entry replaces one of the same name in ``builtin.json`` or is appended.
    :func:`napari_unet.core.checkpoint.install_model` writes the file, then calls this.
    """
    entry = BuiltinModel(**{**asdict(entry), "sha256": file_sha256(entry.path)})
    index = entry.folder / INDEX_NAME
    raw: list[Any] = []
    if index.is_file():
        raw = json.loads(index.read_text(encoding="utf-8") or "[]")
        if not isinstance(raw, list):
            raise NapariUnetError(f"the index {index} must hold a JSON list of models.")
    raw = [e for e in raw if not (isinstance(e, dict) and e.get("name") == entry.name)]
    raw.append(entry.to_json())
    tmp = index.with_name(f".{INDEX_NAME}.tmp")
    tmp.write_text(json.dumps(raw, indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, index)
    return entry


def replay_data(bundle: Any) -> list[tuple[str, np.ndarray, np.ndarray]]:
    """Return the built-in training data a model can replay: (name, image, labels).

    A model loaded from a built-in file, and every model fine-tuned from one, records
    the built-in model's name in ``meta["origin"]``; its index entry names the shipped
    samples that were part of its training data. Empty for any other model, or when
    the model's channels do not fit the images.
    """
    from napari_unet.samples import load_samples

    origin = bundle.meta.get("origin")
    model = get_model(origin) if isinstance(origin, str) else None
    if model is None or not model.replay:
        return []
    pairs = load_samples(list(model.replay))
    fits = (1, bundle.in_channels)
    return [(n, img, lab) for n, img, lab in pairs if (img.shape[2:] or (1,))[0] in fits]


def origin_model(bundle: Any) -> Any | None:
    """Return the built-in model that `bundle` is (or descends from), loaded; or None.

    None when the model records no built-in origin, that model is not installed, or its
    weights do not have the same shapes as `bundle`'s (another architecture).
    """
    from napari_unet.core.checkpoint import load_checkpoint

    origin = bundle.meta.get("origin")
    model = get_model(origin) if isinstance(origin, str) else None
    if model is None or not model.path.is_file():
        return None
    try:
        loaded = load_checkpoint(model.path)
    except (NapariUnetError, OSError):  # damaged, or being replaced right now
        return None
    mine = bundle.model.state_dict()
    theirs = loaded.model.state_dict()
    if mine.keys() != theirs.keys() or any(mine[k].shape != theirs[k].shape for k in mine):
        return None
    return loaded
