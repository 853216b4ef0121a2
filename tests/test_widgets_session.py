"""The widgets' Qt-free parts: session, jobs, channel axes (no viewer needed)."""

import numpy as np
import pytest

from napari_unet._widgets._jobs import JobFailed, reraise_runtime_errors
from napari_unet._widgets._session import Session, TrainingPair, to_sparse_convention
from napari_unet.core.data import guess_channel_axis
from napari_unet.core.errors import NapariUnetError


def test_training_set_keeps_earlier_pairs_and_replaces_by_name():
    session = Session()
    seen = []
    session.training_set_changed.connect(lambda: seen.append(len(session.training_set)))
    image = np.zeros((8, 8), np.uint8)
    labels = np.zeros((8, 8), np.uint16)
    labels[2:4, 2:4] = 1
    session.add_training_pair("a", image, labels)
    labels[2:4, 2:4] = 7  # painting later does not change what was added
    assert session.training_set["a"].labels.max() == 1
    session.add_training_pair("b", image, labels)
    session.add_training_pair("a", image, labels)
    assert seen == [1, 2, 2]
    names, images, all_labels, sparse = session.training_data()
    assert names == ["a", "b"] and not sparse
    assert all_labels[0].max() == 7
    # pairs picked in a widget join for one run, replacing those of the same name
    picked = [TrainingPair("b", image, labels * 0 + 1), TrainingPair("c", image, labels)]
    names, _, all_labels, _ = session.training_data(picked)
    assert names == ["a", "b", "c"] and all_labels[1].max() == 1
    assert session.training_set["b"].labels.max() == 7  # the session's set is unchanged


def test_training_data_mixes_sparse_and_dense_pairs_in_the_sparse_convention():
    session = Session()
    dense = np.array([[0, 0], [3, 3]], np.uint16)
    partial = np.array([[0, 1], [2, 0]], np.uint16)
    session.add_training_pair("partial", np.ones((2, 2)), partial, sparse=True)
    names, _, labels, sparse = session.training_data(TrainingPair("new", np.ones((2, 2)), dense))
    assert sparse and names == ["partial", "new"]
    np.testing.assert_array_equal(labels[0], partial)  # already sparse: unchanged
    np.testing.assert_array_equal(labels[1], [[1, 1], [4, 4]])  # 0 -> 1, k -> k + 1
    assert "new" not in session.training_set  # joins only when retraining succeeded


def test_to_sparse_convention_has_no_unannotated_pixels_and_no_overflow():
    labels = np.array([[0, 65535]], np.uint16)
    out = to_sparse_convention(labels)
    np.testing.assert_array_equal(out, [[1, 65536]])


def test_busy_flag_allows_one_training_at_a_time():
    session = Session()
    states = []
    session.busy_changed.connect(states.append)
    session.begin("training")
    with pytest.raises(RuntimeError, match="training"):
        session.begin("retraining")
    session.end()
    session.end()  # idempotent
    assert states == [True, False]
    assert "No model" in session.describe_model()


@pytest.mark.parametrize(
    ("shape", "rgb", "in_channels", "expected"),
    [
        ((64, 64, 3), True, 3, -1),
        ((64, 64, 4), True, 3, -1),
        ((64, 64), False, 1, None),
        ((5, 64, 64), False, 1, None),  # a stack, grey model
        ((64, 64, 2), False, 2, 2),
        ((2, 64, 64), False, 2, 0),
        ((10, 64, 64), False, 3, None),  # grey stack: the core repeats it on 3 channels
    ],
)
def test_channel_axis_of_a_layer(shape, rgb, in_channels, expected):
    assert guess_channel_axis(shape, in_channels, rgb=rgb) == expected


def test_jobs_turn_runtime_errors_into_errors_the_worker_reports():
    # superqt workers drop RuntimeErrors raised by a generator: jobs must not raise them
    @reraise_runtime_errors
    def job(message):
        yield 1
        raise RuntimeError(message)

    gen = job("CUDA out of memory. Tried to allocate 2 GiB")
    next(gen)
    with pytest.raises(NapariUnetError, match="ran out of memory") as info:
        next(gen)
    assert isinstance(info.value.__cause__, RuntimeError)
    gen = job("something else")
    next(gen)
    with pytest.raises(JobFailed, match="RuntimeError: something else"):
        next(gen)
