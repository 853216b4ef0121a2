"""Fine-tuning on corrections (core.finetune) and the trainer features it uses."""

import threading

import numpy as np
import pytest
import torch
from _builtin_helpers import install_builtin
from _synthetic import nuclei_image

from napari_unet.core.checkpoint import load_checkpoint
from napari_unet.core.corrections import annotation_from_edits, to_sparse
from napari_unet.core.data import (
    Normalisation,
    PatchSampler,
    median_object_diameter,
    prepare_samples,
)
from napari_unet.core.errors import NapariUnetError
from napari_unet.core.finetune import FinetuneConfig, finetune, iter_finetune
from napari_unet.core.train import DONE, TrainConfig, train

TINY = dict(depth=2, base_channels=8, patch_size=64, batch_size=4, device="cpu")


@pytest.fixture(scope="module")
def base_model():
    """A tiny model with fitted prediction settings."""
    pairs = [nuclei_image((96, 96), n=10, seed=s) for s in range(6)]
    result = train(
        [p[0] for p in pairs],
        [p[1] for p in pairs],
        TrainConfig(epochs=2, steps_per_epoch=10, lr=3e-3, val_fraction=0.34, **TINY),
    )
    assert "postprocess" in result.bundle.meta  # the fit ran
    return result.bundle


def _corrected_pair(seed=11):
    image, truth = nuclei_image((96, 96), n=10, seed=seed)
    predicted = np.zeros_like(truth)  # as if the model found nothing in the left half
    predicted[:, 48:] = truth[:, 48:]
    corrected = predicted.copy()
    corrected[:, :48] = truth[:, :48]  # the user painted the missed nuclei
    return image, annotation_from_edits(corrected, predicted), truth


def test_finetune_keeps_the_fitted_settings_and_saves(base_model, tmp_path):
    image, annotation, _ = _corrected_pair()
    assert 0 < np.count_nonzero(annotation) < annotation.size  # partial: only the edits
    path = tmp_path / "tuned.pt"
    result = finetune(
        [image],
        [annotation],
        base_model,
        FinetuneConfig(steps=12, max_seconds=60, device="cpu", checkpoint_path=str(path)),
    )
    assert result.steps == 12
    assert result.before is not None and result.after is not None
    before, after = result.before["f1"], result.after["f1"]
    assert f"corrections {before:.3f} before, {after:.3f} after" in result.summary()
    kept = result.bundle.meta["postprocess"]
    start = base_model.meta["postprocess"]
    if result.kept == "new":
        assert result.checkpoint == path and path.is_file()
        assert kept["threshold"] == start["threshold"] and kept["h"] == start["h"]
        assert kept["source"] == "starting model"
        loaded = load_checkpoint(path)
        assert loaded.meta["postprocess"]["threshold"] == start["threshold"]
        assert result.after["f1"] >= result.before["f1"]
    else:
        assert result.bundle is base_model and result.checkpoint is None
        assert result.after["f1"] < result.before["f1"]
        assert "previous model is kept" in result.summary()
    assert "F1 on your corrections" in result.summary()
    assert "postprocess" in base_model.meta  # the starting model is not changed


def test_finetune_stopped_before_a_step_saves_nothing(base_model, tmp_path):
    image, annotation, _ = _corrected_pair()
    stop = threading.Event()
    stop.set()
    path = tmp_path / "never.pt"
    result = finetune(
        [image],
        [annotation],
        base_model,
        FinetuneConfig(steps=5, device="cpu", checkpoint_path=str(path)),
        stop=stop,
    )
    assert result.stopped and result.steps == 0
    assert result.checkpoint is None and not path.exists()
    assert result.bundle is base_model and result.kept == "old"
    assert "stopped" in result.summary() and "previous model is kept" in result.summary()


@pytest.mark.parametrize(
    "scores, kept", [((0.5, 0.4), "old"), ((0.4, 0.5), "new"), ((0.5, 0.5), "new")]
)
def test_the_better_model_on_the_corrections_is_kept(
    base_model, tmp_path, monkeypatch, scores, kept
):
    from napari_unet.core import finetune as module

    calls = []

    def fake_score(bundle, images, annotations, **kwargs):
        calls.append(bundle)
        return {"tp": 1, "fp": 0, "fn": 0, "f1": scores[len(calls) - 1], "images": 1}

    monkeypatch.setattr(module, "score_on_annotations", fake_score)
    image, annotation, _ = _corrected_pair()
    path = tmp_path / "tuned.pt"
    result = finetune(
        [image],
        [annotation],
        base_model,
        FinetuneConfig(steps=3, device="cpu", checkpoint_path=str(path)),
    )
    assert calls[0] is base_model and calls[1] is not base_model  # old, then new
    assert result.kept == kept
    assert (result.bundle is base_model) == (kept == "old")
    assert path.is_file() == (kept == "new")
    if kept == "old":
        assert result.train.bundle is None and "previous model is kept" in result.summary()


def test_time_cap_ends_the_steps_early_and_warns(base_model, monkeypatch):
    from napari_unet.core import finetune as module

    monkeypatch.setattr(module, "MIN_USEFUL_STEPS", 10**9)  # any machine is "too slow"
    image, annotation, _ = _corrected_pair()
    gen = iter_finetune(
        [image],
        [annotation],
        base_model,
        FinetuneConfig(steps=100_000, max_seconds=2, device="cpu", keep_better=False),
    )
    reports = []
    while True:
        try:
            reports.append(next(gen))
        except StopIteration as end:
            result = end.value
            break
    assert result.steps < 100_000
    assert reports[-1].kind == DONE and reports[-1].message == result.summary()
    assert [r.kind for r in reports].count(DONE) == 1  # the trainer's own is not relayed
    assert result.steps < 100_000 and result.train.stopped == "budget"
    assert any("too few" in n for n in result.notes)


@pytest.mark.parametrize(
    "bad, match",
    [
        (dict(steps=0), "steps"),
        (dict(steps=2.5), "steps"),
        (dict(max_seconds=float("inf")), "max_seconds"),
        (dict(lr=-1.0), "lr"),
        (dict(blend=0.0), "blend"),
        (dict(blend=1.5), "blend"),
        (dict(blend=float("nan")), "blend"),
        (dict(blend_choices=(0.5, 0.0)), "blend"),
    ],
)
def test_finetune_settings_are_checked(base_model, bad, match):
    image, annotation, _ = _corrected_pair()
    with pytest.raises(NapariUnetError, match=match):
        finetune([image], [annotation], base_model, FinetuneConfig(**bad))


def _install_builtin(base_model, tmp_path, monkeypatch):
    """`base_model` installed as the built-in model 'tiny' of a models folder; loaded."""
    return install_builtin(base_model, tmp_path, monkeypatch)


@pytest.mark.parametrize(
    ("scores", "expected"),
    [
        ((0.3, 0.5, 0.7, 0.6), 0.5),  # 0.5 predicts the corrections best
        ((0.3, 0.5, 0.4, 0.6), 0.8),
        ((0.3, 0.5, 0.5, 0.5), 0.65),  # a tie keeps the default share
    ],
)
def test_a_retrain_keeps_the_share_that_predicts_the_corrections_best(
    base_model, tmp_path, monkeypatch, scores, expected
):
    """With blend 0.65 and the choices 0.5 and 0.8, each blended model is scored on the
    corrections (after the previous model) and the best share is kept, in the weights,
    the result's score and the model's record."""
    import napari_unet.core.finetune as finetune_module

    _, builtin = _install_builtin(base_model, tmp_path, monkeypatch)
    monkeypatch.setattr(finetune_module, "MIN_USEFUL_STEPS", 1)
    image, annotation, _ = _corrected_pair()
    unblended = finetune(
        [image],
        [annotation],
        builtin,
        FinetuneConfig(steps=4, device="cpu", keep_better=False, blend=1.0, seed=3),
    ).bundle
    calls = []

    def scored(bundle, *args, **kwargs):  # previous model, then 0.65, 0.5, 0.8
        calls.append(bundle)
        return {"tp": 1, "fp": 0, "fn": 0, "f1": scores[len(calls) - 1], "images": 1}

    monkeypatch.setattr(finetune_module, "score_on_annotations", scored)
    cfg = FinetuneConfig(steps=4, device="cpu", blend=0.65, blend_choices=(0.5, 0.8), seed=3)
    result = finetune([image], [annotation], builtin, cfg)
    assert len(calls) == 4 and calls[0] is builtin
    assert result.kept == "new" and result.after["f1"] == max(scores[1:])
    assert result.bundle.meta["blend"] == {"share": expected, "towards": "tiny"}
    assert result.train.bundle is result.bundle
    start, full = builtin.model.state_dict(), unblended.model.state_dict()
    for key, value in result.bundle.model.state_dict().items():
        if value.is_floating_point():
            torch.testing.assert_close(value, start[key] + expected * (full[key] - start[key]))


def test_stopping_while_the_shares_are_scored_keeps_the_previous_model(
    base_model, tmp_path, monkeypatch
):
    import napari_unet.core.finetune as finetune_module

    _, builtin = _install_builtin(base_model, tmp_path, monkeypatch)
    monkeypatch.setattr(finetune_module, "MIN_USEFUL_STEPS", 1)
    image, annotation, _ = _corrected_pair()
    stop = threading.Event()
    calls = []

    def scored(bundle, *args, **kwargs):  # the user stops while the 0.5 share is scored
        calls.append(bundle)
        if len(calls) == 3:
            stop.set()
            return None
        return {"tp": 1, "fp": 0, "fn": 0, "f1": 0.5, "images": 1}

    monkeypatch.setattr(finetune_module, "score_on_annotations", scored)
    cfg = FinetuneConfig(steps=4, device="cpu", blend_choices=(0.5, 0.8), seed=3)
    result = finetune([image], [annotation], builtin, cfg, stop=stop)
    assert len(calls) == 3  # the 0.8 share is not scored any more
    assert result.kept == "old" and result.stopped and result.bundle is builtin
    assert result.train.bundle is None and result.before is None and result.after is None


def test_blend_keeps_that_share_of_the_fine_tunes_change(base_model, tmp_path, monkeypatch):
    """From the built-in model, blend=0.5 keeps half of what the same fine-tune changed;
    a model of the user's own keeps all of it."""
    import napari_unet.core.finetune as finetune_module

    _, builtin = _install_builtin(base_model, tmp_path, monkeypatch)
    image, annotation, _ = _corrected_pair()

    def run(model, blend):
        cfg = FinetuneConfig(steps=4, device="cpu", keep_better=False, blend=blend, seed=3)
        result = finetune([image], [annotation], model, cfg)
        assert result.kept == "new" and result.steps == 4
        return result.bundle

    # too few steps to have learned much: nothing is pulled back
    few = run(builtin, 0.5)
    assert "blend" not in few.meta
    monkeypatch.setattr(finetune_module, "MIN_USEFUL_STEPS", 1)
    states = {}
    for blend in (1.0, 0.5):
        bundle = run(builtin, blend)
        states[blend] = bundle.model.state_dict()
    assert bundle.meta["blend"] == {"share": 0.5, "towards": "tiny"}
    for key, value in few.model.state_dict().items():
        assert torch.equal(value, states[1.0][key])
    start = builtin.model.state_dict()
    moved = 0
    for key, value in start.items():
        full, half = states[1.0][key], states[0.5][key]
        if value.is_floating_point():
            torch.testing.assert_close(half, value + 0.5 * (full - value))
            moved += int(not torch.equal(full, value))
        else:  # counters (BatchNorm's batches seen) are not blended
            assert torch.equal(half, full)
    assert moved > 10  # the fine-tune did change the weights and running statistics
    # the same model, not a built-in one (no origin): it keeps the whole fine-tune
    own = run(base_model, 0.5)
    assert "blend" not in own.meta
    for key, value in own.model.state_dict().items():
        assert torch.equal(value, states[1.0][key])


def test_anchor_keeps_the_weights_nearer_the_start(base_model):
    image, _, truth = _corrected_pair()
    distances = {}
    for anchor in (0.0, 1e5):
        result = train(
            [image],
            [to_sparse(truth)],
            TrainConfig(
                epochs=1,
                steps_per_epoch=15,
                lr=3e-3,
                val_fraction=0,
                sparse=True,
                anchor=anchor,
                tune_postprocessing=False,
                **TINY,
            ),
            init=base_model,
        )
        start = base_model.model.state_dict()
        distances[anchor] = sum(
            float(((v.float() - start[k].float()) ** 2).sum())
            for k, v in result.bundle.model.state_dict().items()
            if v.dtype.is_floating_point and "running" not in k
        )
    assert distances[1e5] < 0.5 * distances[0.0]


def test_anchor_is_range_checked():
    with pytest.raises(NapariUnetError, match="anchor"):
        TrainConfig(anchor=-1).validate()
    with pytest.raises(NapariUnetError, match="anchor"):
        TrainConfig(anchor=float("nan")).validate()


def test_partial_annotation_patches_fall_on_annotated_pixels():
    image, truth = nuclei_image((256, 256), n=30, seed=3)
    annotation = np.zeros_like(truth)
    annotation[:40, :40] = to_sparse(truth)[:40, :40]  # one small corner annotated
    samples = prepare_samples(
        [image], [annotation], normalisation=Normalisation(), sparse=True, seed=0
    )
    assert samples[0].valid_index is not None
    sampler = PatchSampler(samples, 32, 16, 2, fg_fraction=0.0, augment=False, seed=1)
    for _ in range(5):
        _, _, weights = sampler.batch()
        assert (weights.reshape(16, -1).sum(axis=1) > 0).all()  # every patch counts


def test_a_run_without_a_fit_says_which_settings_prediction_uses(base_model):
    image, truth = nuclei_image((96, 96), n=10, seed=4)
    cfg = TrainConfig(epochs=1, steps_per_epoch=3, val_fraction=0, **TINY)
    done = []
    from napari_unet.core.train import iter_train

    gen = iter_train([image], [truth], cfg)
    while True:
        try:
            p = next(gen)
        except StopIteration as end:
            fresh = end.value
            break
        if p.kind == DONE:
            done.append(p.message)
    assert "default threshold 0.7" in done[0]
    assert "nothing held back to score; last training loss" in done[0]
    assert "postprocess" not in fresh.bundle.meta
    # fine-tuned without a fit: the starting model's settings are kept and said so
    tuned = train([image], [truth], cfg, init=base_model)
    assert (
        tuned.bundle.meta["postprocess"]["threshold"] == base_model.meta["postprocess"]["threshold"]
    )
    assert torch.is_tensor(next(iter(tuned.bundle.model.state_dict().values())))


def test_finetune_of_a_size_normalised_gpu_model_runs_at_its_scale_on_this_machine(monkeypatch):
    """A built-in-like start: trained with object size normalisation and a GPU recipe."""
    import napari_unet.core.predict as predict_module
    from napari_unet.core.finetune import score_on_annotations
    from napari_unet.core.train import TrainConfig, train

    img, lab = nuclei_image((96, 96), n=8, radius=5, seed=0)  # about 10 px across
    start = train(
        [img],
        [lab],
        TrainConfig(
            epochs=1,
            steps_per_epoch=2,
            patch_size=32,
            batch_size=16,
            workers=0,
            object_diameter=20,
            val_fraction=0.0,
            tune_postprocessing=False,
        ),
    ).bundle
    start.meta["train_config"]["workers"] = 4  # as the GPU recipe recorded it
    sparse = np.where(lab > 0, lab + 1, 1).astype(np.int32)
    # the corrections are scored at the scale prediction picks for the whole image
    seen = []
    real = predict_module.object_scale

    def spy(bundle, image, config):
        scale = real(bundle, image, config)
        seen.append((tuple(image.shape[-2:]), config.diameter, scale.factor))
        return scale

    monkeypatch.setattr(predict_module, "object_scale", spy)
    scored = score_on_annotations(start, [img], [sparse], device="cpu")
    assert scored is not None and scored["images"] == 1
    assert seen and seen[0][:2] == ((96, 96), "auto")
    assert seen[0][2] == pytest.approx(20 / median_object_diameter(lab), rel=0.35)
    result = finetune([img], [sparse], start, FinetuneConfig(steps=2, max_seconds=30))
    used = result.bundle.meta["train_config"]
    assert used["workers"] is None and used["batch_size"] == TrainConfig.batch_size
    assert used["object_diameter"] == 20.0


def test_replay_share_sets_how_often_the_replayed_images_are_drawn(base_model):
    samples = prepare_samples(
        [nuclei_image((96, 96), n=8, seed=s)[0] for s in range(4)],
        [nuclei_image((96, 96), n=8, seed=s)[1] for s in range(4)],
        normalisation=Normalisation(),
    )
    samples[3].replay = True  # one replayed image among four
    plain = PatchSampler(samples, 32, 4, 2, augment=False, seed=0)
    assert plain.base_p[3] == pytest.approx(0.25)
    mixed = PatchSampler(samples, 32, 4, 2, augment=False, seed=0, replay_share=0.6)
    assert mixed.base_p[3] == pytest.approx(0.6)
    assert mixed.base_p[:3] == pytest.approx([0.4 / 3] * 3)
    with pytest.raises(NapariUnetError, match="replay_share"):
        TrainConfig(replay_share=1.0).validate()
    image, annotation, _ = _corrected_pair()
    with pytest.raises(NapariUnetError, match="replay_share"):  # TrainConfig's check
        finetune([image], [annotation], base_model, FinetuneConfig(replay_share=-0.1))


def _outputs(bundle, image):
    """The model's probabilities on an image, as prediction computes them."""
    from napari_unet.core.predict import PredictConfig, predict_probabilities

    return predict_probabilities(bundle, image, config=PredictConfig(device="cpu"))


def test_distillation_keeps_the_replayed_images_predicted_as_the_teacher_did(base_model):
    # the replayed image's labels say "one small object, the rest is background": training
    # on them moves the model's outputs on its nuclei; distillation holds them near the
    # teacher's
    image, annotation, _ = _corrected_pair()
    other, _ = nuclei_image((96, 96), n=10, seed=40)
    wrong = np.zeros(other.shape, np.int32)
    wrong[:4, :4] = 1
    replay = [("other", other, wrong)]
    teacher = _outputs(base_model, other)
    moved = {}
    for distill in (0.0, 20.0):
        cfg = TrainConfig(
            epochs=1,
            steps_per_epoch=15,
            lr=3e-3,
            sparse=True,
            val_fraction=0,
            tune_postprocessing=False,
            distill=distill,
            **TINY,
        )
        result = train([image], [annotation], cfg, init=base_model, replay=replay)
        moved[distill] = float(np.mean((_outputs(result.bundle, other) - teacher) ** 2))
    assert moved[20.0] < 0.5 * moved[0.0]
    with pytest.raises(NapariUnetError, match="distill"):
        TrainConfig(distill=-1).validate()
    with pytest.raises(NapariUnetError, match="distill"):
        finetune([image], [annotation], base_model, FinetuneConfig(distill=float("nan")))


def test_replayed_images_are_trained_on_and_never_held_back(base_model):
    from napari_unet.core.builtin import replay_data
    from napari_unet.core.train import START, iter_train

    image, annotation, _ = _corrected_pair()
    replay = [("other", *nuclei_image((96, 96), n=10, seed=40))]
    cfg = TrainConfig(
        epochs=1, steps_per_epoch=2, sparse=True, val_fraction=0, tune_postprocessing=False, **TINY
    )
    gen = iter_train([image], [annotation], cfg, init=base_model, replay=replay)
    start = next(gen)
    assert start.kind == START
    assert "1 image(s) of the starting model's own data replayed" in start.message
    while True:
        try:
            next(gen)
        except StopIteration as end:
            result = end.value
            break
    assert result.steps == 2
    assert replay_data(base_model) == []  # a model of no built-in origin replays nothing


def test_a_builtin_model_and_its_fine_tunes_replay_its_shipped_training_samples(tmp_path):
    """The built-in file records its name; a fine-tune of it replays the samples it learned."""
    from napari_unet.core.builtin import ENV_VAR, get_model, replay_data, resolve_model
    from napari_unet.core.checkpoint import save_checkpoint
    from napari_unet.samples import SAMPLE_NAMES

    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_VAR, raising=False)
        entry = get_model("nuclei")
        # fluo_small is one of the 67 held-back DSB ids: never replayed
        assert set(entry.replay) == set(SAMPLE_NAMES) - {"fluo_small"}
        start = load_checkpoint(resolve_model("nuclei"))
        assert start.meta["origin"] == "nuclei"
        pairs = replay_data(start)
        assert [n for n, _, _ in pairs] == list(entry.replay)
        image, annotation, _ = _corrected_pair()
        cfg = FinetuneConfig(steps=2, max_seconds=60, device="cpu", keep_better=False)
        progress = []
        gen = iter_finetune([image], [annotation], start, cfg)
        while True:
            try:
                progress.append(next(gen).message)
            except StopIteration as end:
                result = end.value
                break
        assert any("5 image(s) of the starting model's own data replayed" in m for m in progress)
        assert result.replayed == 5
        assert "5 images of the built-in model's own data replayed" in result.summary()
        # the fine-tune keeps its origin, through its file too: later retrains replay as well
        path = save_checkpoint(result.bundle, tmp_path / "tuned.pt")
        assert len(replay_data(load_checkpoint(path))) == 5
        off = FinetuneConfig(steps=1, max_seconds=60, device="cpu", replay=False)
        messages = [p.message for p in iter_finetune([image], [annotation], start, off)]
        assert not any("replayed" in m for m in messages)  # the last one is the summary
    # where its built-in model is not installed (the tests' models folder), nothing is replayed
    assert replay_data(load_checkpoint(path)) == []


def test_a_model_recording_settings_of_another_version_still_fine_tunes(base_model):
    """Unknown keys in a model's stored training settings are left out, not an error."""
    import copy

    old = copy.deepcopy(base_model)
    old.meta["train_config"]["setting_of_another_version"] = 3
    image, annotation, _ = _corrected_pair()
    result = finetune([image], [annotation], old, FinetuneConfig(steps=1, device="cpu"))
    assert result.steps == 1
    assert "setting_of_another_version" not in result.bundle.meta["train_config"]
    with pytest.raises(NapariUnetError, match="setting_of_another_version"):
        TrainConfig.from_dict({"setting_of_another_version": 3})  # a user's config file: refused


def test_retrains_of_a_builtin_model_blend_towards_it_round_after_round(
    base_model, tmp_path, monkeypatch
):
    """Every retrain blends towards the built-in model itself, not towards the model it
    started from, round after round."""
    import napari_unet.core.finetune as finetune_module
    from napari_unet.core.builtin import get_model
    from napari_unet.core.checkpoint import install_model, save_checkpoint
    from napari_unet.core.finetune import blend_base

    monkeypatch.setattr(finetune_module, "MIN_USEFUL_STEPS", 1)  # a tiny run blends too
    folder, builtin = _install_builtin(base_model, tmp_path, monkeypatch)
    assert builtin.meta["retrain_base"]["name"] == "tiny"
    image, annotation, _ = _corrected_pair()

    def retrain(model, blend):
        cfg = FinetuneConfig(steps=3, device="cpu", keep_better=False, blend=blend, seed=5)
        return finetune([image], [annotation], model, cfg).bundle

    # round 2 starts from round 1's model, saved and loaded as Retrain does
    round1 = load_checkpoint(save_checkpoint(retrain(builtin, 0.5), tmp_path / "r1.pt"))
    assert round1.meta["retrain_base"] == builtin.meta["retrain_base"]
    assert round1.meta["blend"] == {"share": 0.5, "towards": "tiny"}
    towards = blend_base(round1)
    assert towards is not None
    for key, value in towards.model.state_dict().items():
        assert torch.equal(value, builtin.model.state_dict()[key])
    unblended, blended = retrain(round1, 1.0), retrain(round1, 0.5)
    assert unblended.meta["retrain_base"] == builtin.meta["retrain_base"]  # carried on
    assert "blend" not in unblended.meta
    start = builtin.model.state_dict()
    for key, value in blended.model.state_dict().items():
        if value.is_floating_point():  # half-way from the built-in, not from round 1
            full = unblended.model.state_dict()[key]
            torch.testing.assert_close(value, start[key] + 0.5 * (full - start[key]))
    # a Train run from the built-in model makes the user's own model: it is not blended
    own = train(
        [image],
        [annotation],
        TrainConfig(epochs=1, steps_per_epoch=1, sparse=True, val_fraction=0, **TINY),
        init=builtin,
    ).bundle
    assert own.meta["origin"] == "tiny" and "retrain_base" not in own.meta
    assert blend_base(own) is None
    # a built-in model replaced by another version (another file): not blended
    install_model(save_checkpoint(own, tmp_path / "v2.pt"), "tiny", "Tiny v2", folder=folder)
    assert get_model("tiny").sha256 != round1.meta["retrain_base"]["sha256"]
    assert blend_base(round1) is None
    # no hash to tell versions apart (an index entry without one), or an edited file
    for edited in ({"name": "tiny", "sha256": ""}, {"sha256": "abc"}, "tiny"):
        round1.meta["retrain_base"] = edited
        assert blend_base(round1) is None
