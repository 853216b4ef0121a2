"""Training in a child process (what the Train widget does): results, errors, stop."""

import threading

import numpy as np
import pytest

from napari_unet._widgets._jobs import train_job
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.train import TrainConfig

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
    import subprocess
    import sys

    script = tmp_path / "my_script.py"
    script.write_text(UNGUARDED_SCRIPT.format(settings=TINY), encoding="utf-8")
    run = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.count("trained 2 steps") == 1  # the child did not run the script again
