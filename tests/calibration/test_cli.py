"""vsdmot-degrade: bad input gives one clear line and a non-zero exit; the good path writes a sequence."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import pytest

from vsdmot.calibration import contact_sheet
from vsdmot.calibration.cli import main
from vsdmot.calibration.degrade import PRESETS


@pytest.fixture
def broken(tmp_path, tud_dir):
    """Sequence folders that are wrong in one way each."""
    (tmp_path / "no_seqinfo").mkdir()
    shutil.copy(tud_dir / "TUD-Campus.mp4", tmp_path / "no_seqinfo")
    bad = tmp_path / "bad_video"
    bad.mkdir()
    shutil.copy(tud_dir / "seqinfo.ini", bad)
    (bad / "TUD-Campus.mp4").write_bytes(b"not a video at all" * 100)
    return tmp_path


@pytest.mark.parametrize(
    "args, code, message",
    [
        (["--preset", "fog", "--severity", "3"], 2, "unknown degradation preset 'fog': expected one of gaussian_noise"),
        (["--preset", "jpeg", "--severity", "9"], 2, "severity: expected an integer 1..5, got 9"),
        (["--preset", "jpeg"], 2, "expected either --preset NAME --severity S, or --schedule NAME"),
        (["--schedule", "calm"], 2, "unknown schedule 'calm': expected one of mixed"),
        (["--input", "{tmp}/no_seqinfo", "--preset", "jpeg", "--severity", "1"], 2, "seqinfo.ini: expected a file at"),
        (["--input", "{tmp}/bad_video", "--preset", "jpeg", "--severity", "1"], 1, "video: OpenCV cannot open"),
        (["--input", "{tmp}/nowhere", "--preset", "jpeg", "--severity", "1"], 2, "sequence: expected a folder at"),
        (["--input", "{tud}"], 2, "expected either --preset NAME --severity S, or --schedule NAME"),
    ],
)
def test_bad_input_is_one_clear_line(args, code, message, broken, tud_dir, capfd, monkeypatch):
    monkeypatch.delenv("OPENCV_FFMPEG_LOGLEVEL", raising=False)  # the CLI sets it; restore afterwards
    args = [a.format(tmp=broken, tud=tud_dir) for a in args]
    if "--input" not in args:
        args = ["--input", str(tud_dir), *args]
    args = [*args, "--out", str(broken / "out"), "--no-progress"]
    if code == 1:  # FFmpeg reads its log level once per process: run the real console script
        p = subprocess.run([*_console(), *args], capture_output=True, text=True, timeout=120)
        rc, stderr = p.returncode, p.stderr
    else:
        rc, stderr = main(args), capfd.readouterr().err
    err = [line for line in stderr.splitlines() if line.strip()]
    assert rc == code
    assert len(err) == 1 and err[0].startswith("vsdmot-degrade: error: ") and message in err[0], err
    assert not (broken / "out").exists()


@pytest.mark.parametrize("args, message", [(["--severity", "abc"], "argument --severity: invalid int value: 'abc'"),
                                           (["--fast"], "unrecognized arguments: --fast")])
def test_usage_errors_are_one_line_too(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(args)
    err = capsys.readouterr().err.splitlines()
    assert e.value.code == 2 and len(err) == 1 and err[0].startswith("vsdmot-degrade: error: ") and message in err[0]


def test_missing_out_is_bad_input(tud_dir, capsys):
    assert main(["--input", str(tud_dir), "--preset", "jpeg", "--severity", "1"]) == 2
    assert "expected --input SEQ_DIR and --out DIR" in capsys.readouterr().err


def test_console_script_writes_a_sequence(mot17_dir, tmp_path):
    """The installed entry point, end to end, on a 6-frame real sequence; the bar goes to stderr."""
    out = tmp_path / "seq"
    p = subprocess.run([*_console(), "--input", str(mot17_dir), "--schedule", "mixed", "--seed", "2", "--out", str(out)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == str(out) and "frame" in p.stderr  # tqdm on stderr
    assert len(list((out / "img1").iterdir())) == 6 and (out / "degradation.json").is_file()


def _console() -> list[str]:
    exe = shutil.which("vsdmot-degrade", path=str(Path(sys.executable).parent))
    return [exe] if exe else [sys.executable, "-m", "vsdmot.calibration.cli"]


def test_list_names_every_preset(capsys):
    assert main(["--list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [ln.split()[0] for ln in lines] == list(PRESETS)


def test_contact_sheet_layout(tud_dir, tmp_path):
    clip = _tud(tud_dir, contact_sheet.CLIP)  # 640x480 holds the crop
    sheet = contact_sheet.render(clip, 25.0, presets=("jpeg", "haze"))
    tw, th = contact_sheet.TILE
    assert sheet.shape == (contact_sheet.HEAD_H + 2 * th, contact_sheet.LABEL_W + 6 * tw, 3)
    row = sheet[contact_sheet.HEAD_H + th:, contact_sheet.LABEL_W:]  # the haze row: brighter with severity
    means = [row[:, c * tw:(c + 1) * tw].mean() for c in range(6)]
    assert all(a < b for a, b in zip(means, means[1:])), means


def _tud(tud_dir, n):
    cap = cv2.VideoCapture(str(tud_dir / "TUD-Campus.mp4"))
    frames = [cap.read()[1] for _ in range(n)]
    cap.release()
    return frames


def test_sigterm_removes_the_half_written_copy(pets_dir, tmp_path):
    """A SIGTERM (kill, a job scheduler) left `.out.tmp-*` behind (about 150 MB each): the default
    handler ended the process before its cleanup ran."""
    import signal
    import time

    out = tmp_path / "deg" / "haze"
    proc = subprocess.Popen([sys.executable, "-m", "vsdmot.calibration.cli", "--input", str(pets_dir), "--preset",
                             "haze", "--severity", "3", "--out", str(out), "--no-progress"],
                            stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not list(out.parent.glob(".haze.tmp-*/img1/*.png")) and time.time() < deadline:  # frames being written
        time.sleep(0.1)
    proc.send_signal(signal.SIGTERM)
    err = proc.communicate(timeout=60)[1]
    assert proc.returncode == 143 and "terminated" in err
    assert not out.exists() and list(out.parent.iterdir()) == []
