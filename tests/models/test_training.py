"""Tiny training runs of each stage (few steps, tiny inputs) that save, resume and write their outputs."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("vsdmot.calibration.degrade")

from vsdmot.models import WEIGHTS  # noqa: E402
from vsdmot.models.checkpoint import load_checkpoint  # noqa: E402


def test_detector_stage_self_distils_saves_and_resumes(tmp_path, pets_dir, yolox_onnx):
    from vsdmot.models.train_detector import DetectorTrainConfig, train

    cfg = dict(steps=2, train_size=96, pets_last=30, mot17=False, freeze_detector=False, save_every=1, out=str(tmp_path), threads=1,
               gap=4, data=str(pets_dir.parent), yolox_onnx=str(yolox_onnx))
    train(DetectorTrainConfig(**cfg))
    assert load_checkpoint(tmp_path / "last.pt")["step"] == 2
    final = train(DetectorTrainConfig(**{**cfg, "steps": 3, "resume": True}))
    ckpt = load_checkpoint(final)
    assert ckpt["step"] == 3 and ckpt["optimizer"] is None and ckpt["meta"]["provenance"]["license"] == "Apache-2.0"
    assert ckpt["train_config"]["train_size"] == 96 and ckpt["model_config"]["num_classes"] == 1


def test_student_stage_saves_and_resumes(tmp_path, pets_dir):
    from vsdmot.models.student import load_student
    from vsdmot.models.train_student import StudentTrainConfig, train

    cfg = dict(steps=2, batch=3, pca_crops=6, pets_last=20, mot17=False, input_size=64, dim=16, save_every=1,
               out=str(tmp_path), threads=1, data=str(pets_dir.parent))
    train(StudentTrainConfig(**cfg))
    final = train(StudentTrainConfig(**{**cfg, "steps": 3, "resume": True}))
    student, meta = load_student(final)
    assert meta["step"] == 3 and meta["teacher"] == "efficientnet-lite0" and student.cfg.dim == 16
    assert set(meta["validation"]) == {"cos_student_clean", "cos_student_degraded", "cos_teacher_degraded", "gram_corr_degraded"}
    with pytest.raises(ValueError, match="differs"):
        train(StudentTrainConfig(**{**cfg, "lr": 1.0, "resume": True}))


def test_quality_stage_writes_params_and_reuses_samples(tmp_path, pets_dir, yolox_onnx):
    from vsdmot.models.train_quality import QualityTrainConfig, train
    from vsdmot.runtime.dswr import Dswr
    from vsdmot.runtime.quality import QualityGate

    cfg = dict(pets_every=10, pets_last=30, mot17=False, views=1, draws=1, epochs=20, hidden=4, out=str(tmp_path),
               data=str(pets_dir.parent), detector=str(yolox_onnx))
    path = train(QualityTrainConfig(**cfg))
    doc = json.loads(path.read_text())
    n = doc["meta"]["metrics"]["train"]["n"]
    assert n >= 4 and QualityGate.from_params(doc) and Dswr.from_params(doc)
    # the DSWR g(q) is the shipped tracker's learned one, not the untrained head's defaults
    assert doc["dswr"] == torch.load(WEIGHTS / "tracker.pt", weights_only=True)["meta"]["dswr"]
    again = json.loads(train(QualityTrainConfig(**{**cfg, "resume": True, "hidden": 0, "tracker": ""})).read_text())
    assert again["meta"]["metrics"]["train"]["n"] == n and len(again["gate"]["layers"]) == 1
    assert "dswr" not in again  # none given: no made-up g(q)


def test_cli_lists_every_stage(capsys):
    from vsdmot.models.cli import COMMANDS, main

    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert all(name in out for name in COMMANDS) and {"detector", "student", "quality", "tracker"} <= set(COMMANDS)


@pytest.mark.parametrize("stage", ["detector", "student", "quality", "tracker"])
def test_every_stage_help_prints(stage, capsys):
    """`vsdmot-train STAGE --help` lists the config's fields; a '%' in a field comment ('crop 50-100 %')
    crashed argparse's help formatting with a traceback."""
    from vsdmot.models.cli import main

    with pytest.raises(SystemExit) as e:
        main([stage, "--help"])
    assert e.value.code == 0
    assert "--seed" in capsys.readouterr().out


def test_training_frames_stop_before_the_held_out_ones():
    """The fence every stage reads: PETS frames past 600 (the gate's 601-795) are refused before any I/O."""
    from vsdmot.models.tracker_calib import train_runs
    from vsdmot.models.trainframes import VAL_FIRST, load_pets
    from vsdmot.splits import HELD_OUT_FRAMES, PETS_TRAIN_LAST

    assert PETS_TRAIN_LAST + 1 == HELD_OUT_FRAMES["PETS09-S2L1"][0] and VAL_FIRST <= PETS_TRAIN_LAST
    with pytest.raises(ValueError, match="PETS training frames"):
        load_pets(last=PETS_TRAIN_LAST + 1)
    with pytest.raises(ValueError, match="TRAIN frames within 1-600"):
        train_runs(frames=(550, PETS_TRAIN_LAST + 1))


def test_training_sees_the_detector_input_the_runtime_makes():
    """Training's letterbox (square, uint8) must be the runtime's pixel for pixel, pad included: a
    detector trained on other padding meets other inputs at run time."""
    import numpy as np

    from vsdmot.models.trainframes import letterbox as train_letterbox
    from vsdmot.runtime.yolox import letterbox

    img = np.random.default_rng(0).integers(0, 255, (300, 500, 3), np.uint8)
    boxed, r = train_letterbox(img, 416)
    tensor, scale = letterbox(img, 416)
    assert r == scale and np.array_equal(boxed.transpose(2, 0, 1)[None].astype(np.float32), tensor)


def test_training_data_names_its_layout_and_what_it_skips(tmp_path, caplog):
    """`--data` pointed at a user's own footage failed with 'gt.txt not found', and a sequence put
    under MOT17-mini/train by another name was dropped with the log still saying MOT17-mini: True."""
    from vsdmot.models.trainframes import load_mot17, load_pets

    with pytest.raises(ValueError, match="expected the training data's layout, PETS09-S2L1/PETS09-S2L1.avi"):
        load_pets(tmp_path)
    (tmp_path / "MOT17-mini" / "train" / "mysite" / "img1").mkdir(parents=True)
    (tmp_path / "MOT17-mini" / "train" / "MOT17-97-PNG" / "img1").mkdir(parents=True)
    with caplog.at_level("WARNING", logger="vsdmot.models.trainframes"):
        assert load_mot17(tmp_path) == []
    assert "mysite not read" in caplog.text and "MOT17-97-PNG: no img1/*.jpg frames" in caplog.text


def test_a_held_out_sequence_under_a_training_name_is_refused(tmp_path, tud_dir, mot17_dir, pets_dir):
    """TUD-Campus converted to JPEGs as MOT17-mini/train/MOT17-96-TUD went into training (371 frames,
    71 of them held out): the fence read names only."""
    import shutil

    from vsdmot.models.noise_model import train_sequences
    from vsdmot.models.trainframes import load_mot17, mot17_train_dirs

    root = tmp_path / "data"
    shutil.copytree(tud_dir, root / "TUD-Campus")
    shutil.copytree(mot17_dir, root / "MOT17-mini" / "train" / mot17_dir.name)
    assert [p.name for p in mot17_train_dirs(root)] == [mot17_dir.name]  # a real train sequence passes
    gt = root / "MOT17-mini" / "train" / "MOT17-96-TUD" / "gt" / "gt.txt"
    gt.parent.mkdir(parents=True)
    text = (tud_dir / "gt" / "gt.txt").read_text()
    for copy in (text, text.replace("\n", "\r\n"), text.rstrip("\n")):  # byte-identical or re-saved
        gt.write_text(copy, newline="")
        for read in (load_mot17, train_sequences):
            with pytest.raises(ValueError, match=r"MOT17-96-TUD: \d+ of its \d+ gt boxes are TUD-Campus's held-out"):
                read(root)
    shutil.rmtree(gt.parent.parent)
    shutil.copytree(pets_dir, root / "PETS09-S2L1")  # PETS 601-795 renumbered 1-195 under a training name
    rows = [r.split(",") for r in (pets_dir / "gt" / "gt.txt").read_text().splitlines()]
    renumbered = [",".join([str(int(float(r[0])) - 600), *r[1:]]) for r in rows if 601 <= float(r[0]) <= 795]
    gt = root / "MOT17-mini" / "train" / "MOT17-97-P" / "gt" / "gt.txt"
    gt.parent.mkdir(parents=True)
    gt.write_text("\n".join(renumbered) + "\n")
    with pytest.raises(ValueError, match="MOT17-97-P: .* are PETS09-S2L1's held-out"):
        mot17_train_dirs(root)


@pytest.mark.parametrize("stage, argv", [("detector", ["--pets-last", "700"]), ("student", ["--pets-last", "601"]),
                                         ("quality", ["--pets-last", "795"]), ("tracker", ["--val-first", "700"])])
def test_a_training_range_reaching_held_out_frames_is_refused(stage, argv, capsys, tmp_path):
    """--pets-last 700 was clamped to the last train frame in silence, and --val-first 700 let PETS
    601-699 into the tracker's real clips."""
    from vsdmot.models.cli import main

    assert main([stage, *argv, "--out", str(tmp_path / "o")]) == 2
    assert "held out" in capsys.readouterr().err and not (tmp_path / "o").exists()


def test_an_out_that_is_a_file_is_named(tmp_path):
    from vsdmot.models.trainloop import out_dir

    (tmp_path / "det.log").write_text("x")
    for out in ("det.log", "det.log/run"):
        with pytest.raises(ValueError, match=r"det.log is a file; expected a folder"):  # was "[Errno 17] File exists"
            out_dir(str(tmp_path / out))
    assert out_dir(str(tmp_path / "a" / "b")).is_dir()
