"""A resumed training run equals an uninterrupted one (the same batches, the same weights)."""

from __future__ import annotations

import os
import signal

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vsdmot.calibration.degrade")

from vsdmot.models.checkpoint import load_checkpoint  # noqa: E402


def _same_weights(a, b) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_student_resume_equals_uninterrupted_run(tmp_path, pets_dir):
    """The batches come from a numpy Generator; a resume used to restart it from the seed (and skip
    the draws of the projection fit), so steps after a resume saw other crops and degradations."""
    from vsdmot.models.train_student import StudentTrainConfig, train

    cfg = dict(steps=4, batch=3, pca_crops=6, pets_last=20, mot17=False, input_size=64, dim=16, save_every=1,
               threads=1, max_minutes=0, data=str(pets_dir.parent))
    whole = train(StudentTrainConfig(**cfg, out=str(tmp_path / "whole")))
    # --stop-at: stopped after step 2 with the 4-step schedule, as the CPU budget or a kill would
    train(StudentTrainConfig(**cfg, out=str(tmp_path / "split"), stop_at=2))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 2
    resumed = train(StudentTrainConfig(**cfg, out=str(tmp_path / "split"), resume=True))
    assert load_checkpoint(resumed)["step"] == 4
    assert _same_weights(whole, resumed)


def test_detector_resume_equals_uninterrupted_run(tmp_path, pets_dir, yolox_onnx):
    from vsdmot.models.train_detector import DetectorTrainConfig, train

    cfg = dict(steps=4, train_size=96, pets_last=30, mot17=False, save_every=1, threads=1, max_minutes=0, gap=4,
               data=str(pets_dir.parent), yolox_onnx=str(yolox_onnx))
    whole = train(DetectorTrainConfig(**cfg, out=str(tmp_path / "whole")))
    train(DetectorTrainConfig(**cfg, out=str(tmp_path / "split"), stop_at=2))
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 2
    resumed = train(DetectorTrainConfig(**cfg, out=str(tmp_path / "split"), resume=True))
    assert _same_weights(whole, resumed)


def test_quality_resume_refuses_samples_of_another_collection(tmp_path, pets_dir, yolox_onnx):
    """--resume continued a samples.npz collected with other settings (severities, draws, detector,
    seed...) and mixed the two collections into one fit; a head-only change still reuses them."""
    from vsdmot.models.train_quality import QualityTrainConfig, train

    cfg = dict(pets_every=10, pets_last=20, mot17=False, views=1, draws=1, epochs=5, hidden=4, out=str(tmp_path),
               data=str(pets_dir.parent), detector=str(yolox_onnx))
    train(QualityTrainConfig(**cfg))
    train(QualityTrainConfig(**{**cfg, "resume": True, "epochs": 3, "hidden": 0}))  # the head only: reused
    with pytest.raises(ValueError, match="severity_max"):
        train(QualityTrainConfig(**{**cfg, "resume": True, "severity_max": 2}))


def test_tracker_resume_equals_uninterrupted_run(tmp_path, monkeypatch):
    from vsdmot.models import train_tracker as T

    cfg = dict(synth_steps=4, real_steps=0, batch=2, clip_frames=4, save_every=3, max_minutes=0, threads=1)
    whole = T.train(T.TrainConfig(**cfg, out=str(tmp_path / "whole")))
    real_step = T._train_step

    def killed_at_3(model, opt, c, noise, real, step, total):
        if step == 3:
            raise KeyboardInterrupt
        return real_step(model, opt, c, noise, real, step, total)

    with monkeypatch.context() as m:  # a kill after the save at step 3
        m.setattr(T, "_train_step", killed_at_3)
        with pytest.raises(KeyboardInterrupt):
            T.train(T.TrainConfig(**cfg, out=str(tmp_path / "killed")))
    assert load_checkpoint(tmp_path / "killed" / "last.pt")["step"] == 3
    assert _same_weights(whole, T.train(T.TrainConfig(**cfg, out=str(tmp_path / "killed"))))
    T.train(T.TrainConfig(**cfg, out=str(tmp_path / "split"), stop_at=2))  # --stop-at: as the budget stopped it
    assert load_checkpoint(tmp_path / "split" / "last.pt")["step"] == 2
    resumed = T.train(T.TrainConfig(**cfg, out=str(tmp_path / "split")))
    assert load_checkpoint(resumed)["step"] == 4 and _same_weights(whole, resumed)


def test_tracker_max_minutes_0_is_no_budget(tmp_path):
    """--max-minutes 0 means no budget, as in the other stages; the tracker stopped after one step."""
    from vsdmot.models import train_tracker as T

    last = T.train(T.TrainConfig(synth_steps=3, real_steps=0, batch=1, clip_frames=3, max_minutes=0, threads=1,
                                 out=str(tmp_path)))
    assert load_checkpoint(last)["step"] == 3


def test_a_run_that_replaces_an_earlier_one_says_so(tmp_path, caplog):
    """Re-running a crashed stage's command without --resume started it over in silence."""
    from vsdmot.models.trainloop import resuming

    saved = tmp_path / "last.pt"
    assert not resuming(saved, True) and not resuming(saved, False) and caplog.text == ""
    saved.write_bytes(b"x")
    assert resuming(saved, True) and caplog.text == ""
    with caplog.at_level("WARNING", logger="vsdmot.models.trainloop"):
        assert not resuming(saved, False)
    assert "last.pt exists: this run starts over and replaces it (--resume continues from it)" in caplog.text


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_ctrl_c_or_sigterm_finishes_the_step_saves_and_exits(signum, caplog):
    """Both stopped training at once with the last save up to 50 steps back (about 20 min of work):
    now the step in hand finishes, is saved, and the exit code says which signal."""
    from vsdmot.models.trainloop import run_steps

    done, saved = [], []

    def step(k):
        done.append(k)
        if k == 6:
            os.kill(os.getpid(), signum)
        return {"loss": 1.0}

    with pytest.raises(SystemExit) as e, caplog.at_level("WARNING", logger="vsdmot.models.trainloop"):
        run_steps(step, 0, 100, 0, saved.append, 5, "t")
    assert e.value.code == 128 + signum and done == list(range(7)) and saved == [5, 7]
    assert "stopped and saved at step 7; the same command with --resume continues" in caplog.text
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # restored
