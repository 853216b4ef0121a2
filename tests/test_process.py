"""Jobs in a child process (what the Train and Predict widgets do): results, errors, stop.

Also what crosses the process boundary: arrays in pieces, models as LazyBundles (the
viewer's process never imports torch to predict), and arguments pickle cannot send.
"""

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from napari_unet._widgets import _process
from napari_unet._widgets._jobs import PREDICT_ADVICE, Predicted, predict_job, train_job
from napari_unet._widgets._process import (
    PIECE_BYTES,
    ChildProcessDied,
    LazyBundle,
    run_in_child,
)
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.train import TrainConfig
from tests._gui_helpers import tiny_model_file

REPO = Path(__file__).resolve().parents[1]

TINY = TrainConfig(
    epochs=1, steps_per_epoch=2, patch_size=32, batch_size=2, depth=2, base_channels=4, device="cpu"
).to_dict()


def drain(gen):
    items = []
    while True:
        try:
            items.append(next(gen))
        except StopIteration as done:
            return items, done.value


def blobs():
    labels = np.zeros((64, 64), np.uint16)
    labels[10:20, 10:20] = 1
    labels[40:52, 30:44] = 2
    image = (labels > 0).astype(np.float32) + np.random.default_rng(0).normal(0, 0.1, (64, 64))
    return image.astype(np.float32), labels


def test_training_in_a_child_process_relays_progress_and_returns_the_model():
    image, labels = blobs()
    items, result = drain(train_job([image], [labels], TINY, names=["a"]))
    kinds = [p.kind for p in items]
    assert kinds[0] == "start" and kinds[-1] == "done" and kinds.count("step") == 2
    assert result.steps == 2
    x = np.zeros((1, 1, 32, 32), np.float32)
    import torch

    assert result.bundle.model(torch.from_numpy(x)).shape == (1, 2, 32, 32)


def test_an_error_in_the_child_is_raised_here_with_its_type_and_message():
    image, labels = blobs()
    with pytest.raises(NapariUnetError, match="Nothing to learn from"):
        drain(train_job([image], [np.zeros_like(labels)], TINY))


def test_stop_reaches_the_child():
    image, labels = blobs()
    stop = threading.Event()
    stop.set()
    config = dict(TINY, epochs=1000)
    _, result = drain(train_job([image], [labels], config, stop=stop))
    assert result.stopped == "user" and result.steps == 0


UNGUARDED_SCRIPT = """
import numpy as np
from napari_unet._widgets._jobs import train_job

# no `if __name__ == "__main__":` guard, as in many users' scripts
labels = np.zeros((64, 64), np.uint16)
labels[10:20, 10:20] = 1
labels[40:52, 30:44] = 2
image = (labels > 0).astype(np.float32)
gen = train_job([image], [labels], {settings!r}, names=["a"])
while True:
    try:
        next(gen)
    except StopIteration as done:
        print("trained", done.value.steps, "steps")
        break
"""


def test_a_script_without_a_main_guard_trains_in_a_child(tmp_path):
    script = tmp_path / "my_script.py"
    script.write_text(UNGUARDED_SCRIPT.format(settings=TINY), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("trained 2 steps") == 1  # the child did not run the script again


# ------------------------------------------------------------------ what crosses the boundary
def test_arrays_come_back_in_pieces_as_writable_arrays_of_this_process():
    big = np.arange(1600 * 1000, dtype=np.uint32).reshape(1600, 1000)  # 6.1 MiB: 2 pieces
    assert big.nbytes > PIECE_BYTES
    value = {
        "labels": big,
        "same": big,  # one array, referenced twice
        "fortran": np.asfortranarray(np.random.default_rng(0).random((300, 200), np.float32)),
        "view": big[::3, ::2],  # not contiguous: inside the pickle
        "small": np.array([1, 2, 3], np.int16),
        "text": "ok",
    }
    items, back = drain(run_in_child("tests._child_targets:echo", value))
    assert items == [False]
    assert back["same"] is back["labels"]
    for key in ("labels", "fortran", "view", "small"):
        np.testing.assert_array_equal(back[key], value[key])
        assert back[key].dtype == value[key].dtype and back[key].flags.writeable
    assert back["fortran"].flags.f_contiguous and back["text"] == "ok"


def test_a_child_that_dies_says_so_and_what_to_try():
    gen = run_in_child("tests._child_targets:die", advice=PREDICT_ADVICE)
    assert next(gen) == "about to die"
    with pytest.raises(ChildProcessDied, match="exit code -9") as caught:
        next(gen)
    assert "smaller tile size" in str(caught.value)


# ------------------------------------------------------------------ prediction in a child
TILES = {"tile_size": 64, "overlap": 16}  # 4 tiles of the 64 x 64 image


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    return tiny_model_file(tmp_path_factory.mktemp("model") / "tiny.pt")


def predict(image, model_file, **kwargs):
    gen = predict_job(None, image, rgb=False, config=TILES, bundle_path=str(model_file), **kwargs)
    return drain(gen)


def test_prediction_in_a_child_equals_prediction_here_and_sends_back_a_lazy_model(model_file):
    image, _ = blobs()
    items, there = predict(image, model_file, measure={})
    _, here = predict(image, model_file, measure={}, in_child=False)
    assert items[-1].done == items[-1].total == 4
    np.testing.assert_array_equal(there.result.labels, here.result.labels)
    for name, probability in here.result.probabilities.items():
        np.testing.assert_array_equal(there.result.probabilities[name], probability)
    assert there.measured.labels is there.result.labels
    assert list(there.measured.features) == list(here.measured.features)
    assert there.loaded_from == str(model_file)
    model = there.bundle
    assert isinstance(model, LazyBundle) and not model.loaded
    assert model.in_channels == 1 and model.outputs == ["foreground", "boundary"]
    # given back to a child, it travels as it came, still not loaded here
    _, again = drain(predict_job(model, image, rgb=False, config=TILES))
    assert again.bundle is model and not model.loaded
    np.testing.assert_array_equal(again.result.labels, here.result.labels)
    assert model.spec.in_channels == 1 and model.loaded  # what uses the model loads it


def test_stop_ends_a_prediction_in_a_child_without_a_result(model_file):
    image = np.random.default_rng(0).random((256, 256), dtype=np.float32)
    stop = threading.Event()
    many = {"tile_size": 64, "overlap": 64}  # tiles 4 pixels apart: 4,096 of them
    gen = predict_job(None, image, rgb=False, config=many, bundle_path=str(model_file), stop=stop)
    first = next(gen)
    stop.set()
    items, predicted = drain(gen)
    assert predicted.result is None
    assert len(items) + 1 < first.total  # it did not run to the end


def test_extra_keywords_reach_iter_predict_unchanged(model_file, monkeypatch):
    import napari_unet.core.predict as core_predict

    seen = {}
    real = core_predict.iter_predict

    def spy(*args, **kwargs):
        seen.update(kwargs)
        kwargs.pop("future_option")
        return (yield from real(*args, **kwargs))

    monkeypatch.setattr(core_predict, "iter_predict", spy)
    image, _ = blobs()
    _, predicted = predict(image, model_file, in_child=False, future_option=("Z", 2.5))
    assert seen["future_option"] == ("Z", 2.5) and predicted.result is not None

    sent = {}

    def fake_run_in_child(target, *args, **kwargs):
        sent.update(kwargs)
        return (yield from iter([])) or Predicted(None, None)

    monkeypatch.setattr(_process, "run_in_child", fake_run_in_child)
    drain(predict_job(object(), image, rgb=False, config={}, future_option=("Z", 2.5)))
    assert sent["future_option"] == ("Z", 2.5)


def test_out_of_memory_in_the_child_retries_with_fewer_tiles_and_says_so(model_file):
    image, _ = blobs()
    items, predicted = drain(
        run_in_child(
            "tests._child_targets:predict_with_memory_limit",
            None,
            image,
            rgb=False,
            config=TILES,  # 4 tiles of 64 x 64 a step: only 1 fits
            bundle_path=str(model_file),
            limit=64 * 64,
        )
    )
    notes = [p.message for p in items if "out of memory" in p.message]
    assert len(notes) == 2 and "1 tile(s) of 64 pixels" in notes[-1]
    assert predicted.result.notes == notes
    assert predicted.result.settings["batch_size"] == 1


class Unsendable:
    """An array-like no pickler can send (it holds a lock), e.g. an open file's dataset."""

    def __init__(self, data):
        self.data, self.lock = data, threading.Lock()
        self.shape, self.ndim, self.dtype = data.shape, data.ndim, data.dtype

    def __getitem__(self, key):
        with self.lock:
            return self.data[key]

    def __array__(self, dtype=None, copy=None):
        return np.asarray(self.data, dtype=dtype)


def test_images_pickle_refuses_go_by_cloudpickle_or_are_predicted_here(model_file):
    dask_array = pytest.importorskip("dask.array")
    image, _ = blobs()
    _, expected = predict(image, model_file)
    # a dask graph holding a lambda: the standard pickler refuses it, cloudpickle sends it
    lazy = dask_array.from_array(image, chunks=32).map_blocks(lambda block: block + 0)
    _, sent = predict(lazy, model_file)
    np.testing.assert_array_equal(sent.result.labels, expected.result.labels)
    assert sent.result.notes == expected.result.notes
    # nothing can send this one: predicted in this process, and the notes say so
    _, here = predict(Unsendable(image), model_file)
    np.testing.assert_array_equal(here.result.labels, expected.result.labels)
    assert any("predicted in napari's own process" in note for note in here.result.notes)


def test_a_retrain_whose_image_cannot_be_sent_fine_tunes_there_and_predicts_here(model_file):
    from napari_unet._widgets._jobs import retrain_job
    from napari_unet.core.checkpoint import load_checkpoint

    image, labels = blobs()
    items, retrained = drain(
        retrain_job(
            [image],
            [labels.astype(np.int32) + 1],  # every pixel annotated (sparse convention)
            {"steps": 2, "device": "cpu"},
            load_checkpoint(model_file),
            Unsendable(image),
            names=["a"],
            scored=[0],
            rgb=False,
            predict_config=TILES,
        )
    )
    assert retrained.tuned.steps == 2 and isinstance(retrained.tuned.bundle, LazyBundle)
    assert retrained.predicted.result.labels.shape == image.shape
    assert any("predicted in napari's own process" in n for n in retrained.predicted.result.notes)
    assert any(hasattr(p, "total") for p in items) and any(hasattr(p, "step") for p in items)


NO_TORCH_SCRIPT = """
import json, sys
import numpy as np
from napari_unet._widgets._jobs import predict_job, retrain_job

def drain(gen):
    while True:
        try:
            next(gen)
        except StopIteration as done:
            return done.value

labels = np.zeros((64, 64), np.uint16)
labels[10:20, 10:20] = 1
labels[40:52, 30:44] = 2
image = (labels > 0).astype(np.float32)
config = {{"tile_size": 64, "overlap": 16}}
first = drain(predict_job(None, image, rgb=False, config=config, bundle_path={path!r}))
again = drain(predict_job(first.bundle, image, rgb=False, config=config, measure={{}}))
retrained = drain(retrain_job(
    [image], [labels.astype(np.int32) + 1], {{"steps": 2, "device": "cpu"}}, first.bundle, image,
    names=["a"], scored=[0], rgb=False, predict_config=config, measure={{}},
))
print(json.dumps({{
    "torch_imported": "torch" in sys.modules,
    "model": type(first.bundle).__name__,
    "labels": list(again.result.labels.shape),
    "tuned_model": type(retrained.tuned.bundle).__name__,
    "steps": retrained.tuned.steps,
    "repredicted": list(retrained.predicted.result.labels.shape),
}}))
"""


def test_predicting_and_retraining_never_import_torch_in_the_viewers_process(model_file, tmp_path):
    script = tmp_path / "no_torch.py"
    script.write_text(NO_TORCH_SCRIPT.format(path=str(model_file)), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert run.returncode == 0, run.stderr[-3000:]
    report = json.loads(run.stdout.strip().splitlines()[-1])
    assert report == {
        "torch_imported": False,
        "model": "LazyBundle",
        "labels": [64, 64],
        "tuned_model": "LazyBundle",
        "steps": 2,
        "repredicted": [64, 64],
    }
