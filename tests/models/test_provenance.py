"""What a trained file says it was trained on (meta["data"], copied into bundle manifests)."""

from __future__ import annotations

import pytest

pytest.importorskip("torch")
pytest.importorskip("vsdmot.calibration.degrade")

from vsdmot.models.trainframes import data_note  # noqa: E402


@pytest.mark.parametrize("args, want", [
    ((600, True, 2), "PETS09-S2L1 1-540 every 2 (541-600 validation), MOT17-mini train"),
    ((560, False, 1), "PETS09-S2L1 1-540 (541-560 validation)"),
    ((20, False, 2), "PETS09-S2L1 1-20 every 2"),
    ((540, True, 2, False), "PETS09-S2L1 1-540 every 2, MOT17-mini train"),
    ((600, True, 6, False), "PETS09-S2L1 1-600 every 6, MOT17-mini train"),
])
def test_data_note(args, want):
    assert data_note(*args) == want


def test_a_student_records_the_frames_it_used(tmp_path, pets_dir, caplog):
    """meta["data"] was a constant ("PETS09-S2L1 1-540 (541-600 validation), MOT17-mini train")
    whatever --pets-last and --no-mot17 said, and the log called training crops "PETS 541-600"."""
    import logging

    from vsdmot.models.student import load_student
    from vsdmot.models.train_student import StudentTrainConfig, train

    cfg = StudentTrainConfig(steps=1, batch=3, pca_crops=6, pets_last=20, mot17=False, input_size=64, dim=16,
                             out=str(tmp_path), threads=1, data=str(pets_dir.parent))
    with caplog.at_level(logging.INFO, logger="vsdmot.models.train_student"):
        _, meta = load_student(train(cfg))
    assert meta["data"] == "PETS09-S2L1 1-20 every 2"
    assert "training crops" in caplog.text and "541-600" not in caplog.text
