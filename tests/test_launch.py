"""Both ways users start napari train and predict (real viewers under Xvfb, in subprocesses).

Training and prediction run in child processes started with ``spawn``, which normally
runs the parent's ``__main__`` again in every child. A script without an
``if __name__ == "__main__":`` guard would then open a second viewer in the child and
start a second training there, which fails in multiprocessing's bootstrapping and left
training hanging at "Preparing 1 image(s)..." (issue 23). ``napari script.py`` even
points ``__main__`` at the script. Each case here runs a script that opens the Train
and Predict widgets, trains a tiny model, predicts with it and quits; the script's
output shows it ran exactly once.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.gui, pytest.mark.slow]

#: Seconds a whole script may take (napari's start, a training and a prediction in child
#: processes, on a busy 2-core machine).
TIMEOUT_S = 240

BODY = """
import os
import sys

import napari
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication

from napari_unet import PLUGIN_NAME
from napari_unet._widgets._predict import MODEL_SESSION

print("SCRIPT RUNS", flush=True)
viewer = napari.Viewer()  # under `napari script.py`: the viewer napari opened
viewer.open_sample(PLUGIN_NAME, "fluo_small")
_, train = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Train")
_, predict = viewer.window.add_plugin_dock_widget(PLUGIN_NAME, "Predict")
train.pairs.set_pairs([("fluo_small", "fluo_small_ground_truth")])
train.epochs.setValue(1)
train.patch_size.setValue(64)
train.batch_size.setValue(2)
train.depth.setValue(2)
train.base_channels.setValue(8)
train.device.setCurrentText("cpu")
train.save_path.value = {model!r}
state = {{"phase": "training"}}


def step():
    if state["phase"] == "training" and train._worker is None:
        print("TRAINED:", train.status.text().splitlines()[0], flush=True)
        predict.model_choice.setCurrentText(MODEL_SESSION)
        predict.device.setCurrentText("cpu")
        predict.tile_size.setValue(128)
        predict.predict()
        state["phase"] = "predicting"
    elif state["phase"] == "predicting" and predict._worker is None:
        labels = viewer.layers["fluo_small_labels"].data
        print("PREDICTED:", labels.shape, flush=True)
        state["phase"] = "done"
        timer.stop()
        viewer.close()
        QApplication.instance().quit()


def give_up():
    print("GAVE UP in phase", state["phase"], "status:", train.status.text(), flush=True)
    os._exit(3)


train.start()
timer = QTimer()
timer.timeout.connect(step)
timer.start(200)
QTimer.singleShot({timeout_ms}, give_up)
"""

WITHOUT_GUARD = BODY + "napari.run()\n"

WITH_GUARD = (
    "def main():\n"
    + "".join(f"    {line}\n" if line else "\n" for line in BODY.strip().splitlines())
    + "    napari.run()\n\n\n"
    + 'if __name__ == "__main__":\n    main()\n'
)


def run_script(tmp_path: Path, source: str, command: list[str]) -> subprocess.CompletedProcess:
    if not (os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY")):
        pytest.skip("needs a display (run the tests under xvfb-run)")
    script = tmp_path / "my_napari_script.py"
    script.write_text(
        source.format(model=str(tmp_path / "model.pt"), timeout_ms=1000 * (TIMEOUT_S - 30)),
        encoding="utf-8",
    )
    env = dict(os.environ)
    env["NAPARI_CONFIG"] = str(tmp_path / "napari_settings.yaml")  # not the user's settings
    return subprocess.run(
        [*command, str(script)],
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
        cwd=tmp_path,
        env=env,
    )


def assert_trained_and_predicted_once(run: subprocess.CompletedProcess, tmp_path: Path) -> None:
    out = run.stdout
    assert "GAVE UP" not in out, out + run.stderr[-3000:]
    assert out.count("SCRIPT RUNS") == 1, out  # no child process ran the script again
    assert out.count("TRAINED: Done") == 1, out + run.stderr[-3000:]
    assert out.count("PREDICTED: (256, 256)") == 1, out + run.stderr[-3000:]
    assert (tmp_path / "model.pt").is_file()
    assert "bootstrapping" not in run.stderr, run.stderr[-3000:]


@pytest.mark.parametrize("source", [WITHOUT_GUARD, WITH_GUARD], ids=["no_guard", "guard"])
def test_a_script_run_with_python_trains_and_predicts(tmp_path, source):
    run = run_script(tmp_path, source, [sys.executable])
    assert run.returncode == 0, run.stdout + run.stderr[-3000:]
    assert_trained_and_predicted_once(run, tmp_path)


def test_a_script_opened_by_the_napari_command_trains_and_predicts(tmp_path):
    napari = shutil.which("napari", path=str(Path(sys.executable).parent))
    if napari is None:
        pytest.skip("the napari command is not installed next to this Python")
    # `napari script.py` runs the script in napari's viewer (and makes it __main__'s file)
    run = run_script(tmp_path, WITHOUT_GUARD, [napari])
    assert_trained_and_predicted_once(run, tmp_path)
