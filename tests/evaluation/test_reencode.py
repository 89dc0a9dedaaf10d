"""The re-encode study: libx264 encodes of a real sequence, tracked by `vsdmot-edge run`, scored on a
window; cells resume after a kill; the per-CRF difference of two trackers and its range."""

from __future__ import annotations

import cv2
import pytest

from helpers import frames
from vsdmot.evaluation import reencode as R
from vsdmot.evaluation.reencode import ReencodeConfig
from vsdmot.runtime.errors import VsdmotError
from vsdmot.runtime.mot import read_rows


def test_real_encodes_tracked_and_scored_on_a_window(tud_dir, ffmpeg, tmp_path):
    cfg = ReencodeConfig(sequences=(f"{tud_dir}:1-8",), crfs=(18, 40), trackers=("bytetrack",), diff=(),
                         original=False, out_dir=str(tmp_path))
    cells = R.run_study(cfg, progress=False)
    assert [(c["crf"], c["tracker"], c["window"]) for c in cells] == [("18", "bytetrack", [1, 8]), ("40", "bytetrack", [1, 8])]
    assert all(0.0 < c["HOTA"] <= 1.0 and 0.0 < c["IDF1"] <= 1.0 for c in cells)
    enc = {c: next((tmp_path / "encodes").glob(f"TUD-Campus.crf{c}.*.mp4")) for c in (18, 40)}
    assert enc[40].stat().st_size < enc[18].stat().st_size / 2  # the CRF reached the encoder
    cap = cv2.VideoCapture(str(enc[40]))
    assert (cap.get(cv2.CAP_PROP_FRAME_COUNT), cap.get(cv2.CAP_PROP_FRAME_WIDTH)) == (71, 640)
    cap.release()
    rows = read_rows(tmp_path / "results" / "TUD-Campus.40.bytetrack.txt")
    assert rows.frame.min() >= 1 and rows.frame.max() == 8  # the run stopped after the window
    again = R.run_study(cfg, lambda *a: pytest.fail("finished cells are not run again"), progress=False)
    assert again == cells
    md = R.write_tables(cfg, cells)
    assert "| TUD-Campus | 1-8 | 40 | bytetrack |" in md and (tmp_path / "reencode.json").is_file()


def tiny_sequence(root, size, n=6):
    """A MOTChallenge folder of `n` real PETS frames resized to size x size (images, no video)."""
    (root / "img1").mkdir(parents=True)
    for i, img in enumerate(frames(n, size), 1):
        cv2.imwrite(str(root / "img1" / f"{i:06d}.jpg"), img)
    (root / "gt").mkdir()
    (root / "gt" / "gt.txt").write_text("".join(f"{i},1,5,5,20,30,1,-1,-1,-1\n" for i in range(1, n + 1)))
    (root / "seqinfo.ini").write_text(f"[Sequence]\nname=tiny\nimDir=img1\nframeRate=7\nseqLength={n}\n"
                                      f"imWidth={size}\nimHeight={size}\nimExt=.jpg\n")
    return root


@pytest.mark.parametrize("size, coded", [(64, 64), (63, 64)])  # yuv420p needs even sides: padded
def test_image_folders_are_encoded_in_order(tmp_path, ffmpeg, size, coded):
    seq = tiny_sequence(tmp_path / "seq", size)
    out = R.encode(seq, 30, tmp_path / "e.mp4")
    cap = cv2.VideoCapture(str(out))
    got = []
    while (ok := cap.read())[0]:
        got.append(ok[1])
    assert len(got) == 6 and got[0].shape == (coded, coded, 3)
    src = [cv2.imread(str(p)) for p in sorted((seq / "img1").iterdir())]
    err = [[abs(cv2.absdiff(g[:size, :size], s).mean()) for s in src] for g in got]
    assert [min(range(6), key=row.__getitem__) for row in err] == list(range(6))  # frame i is image i
    assert not (tmp_path / "e.partial.mp4").exists()


# -- cells, resume and the difference table, with a fake tracker ----------------------------------------
def fake_tracker(calls):
    """hybrid writes the gt of frames 1..last (perfect); bytetrack only its odd frames."""
    def track(source, tracker, res, cfg, last):
        calls.append((source.name, tracker))
        seq = R.split_spec(cfg.sequences[0])[0]
        lines = [x for x in (seq / "gt" / "gt.txt").read_text().splitlines() if int(x.split(",")[0]) <= last]
        if tracker == "bytetrack":
            lines = [x for x in lines if int(x.split(",")[0]) % 2]
        res.parent.mkdir(parents=True, exist_ok=True)
        res.write_text("".join(x + "\n" for x in lines))
    return track


def test_cells_resume_after_a_kill(tud_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(R, "encode", lambda seq, crf, out: out)  # the fake tracker never reads the encode
    cfg = ReencodeConfig(sequences=(f"{tud_dir}:5-20",), crfs=(15, 24), trackers=("hybrid", "bytetrack"),
                         out_dir=str(tmp_path))
    calls = []
    track = fake_tracker(calls)

    def dies_after_2(*a):
        if len(calls) == 2:
            raise KeyboardInterrupt
        track(*a)

    with pytest.raises(KeyboardInterrupt):
        R.run_study(cfg, dies_after_2, progress=False)
    assert len(R.read_cells(tmp_path / "cells.jsonl")) == 2
    cells = R.run_study(cfg, track, progress=False)
    assert len(calls) == 2 + 4 and len(cells) == 6 == len(R.read_cells(tmp_path / "cells.jsonl"))
    assert [c["crf"] for c in cells] == ["original", "original", "15", "15", "24", "24"]
    assert calls[0] == (tud_dir.name, "hybrid") and calls[2][0].startswith("TUD-Campus.crf15.")
    h = {(c["crf"], c["tracker"]): c["HOTA"] for c in cells}
    assert h[("15", "hybrid")] > 0.99 and h[("15", "bytetrack")] < 0.9  # scored on the window, against gt
    d = R.differences(cells, "hybrid", "bytetrack")[f"{tud_dir}:5-20"]
    assert d["per_crf"]["24"] == pytest.approx(100 * (h[("24", "hybrid")] - h[("24", "bytetrack")]), abs=0.01)
    monkeypatch.setattr(R, "runtime_code_id", lambda: "other tracker code")
    R.run_study(cfg, track, progress=False)
    assert len(calls) == 6 + 6  # new per-frame code: every cell again


def test_cells_are_rerun_when_their_input_frames_change(tmp_path, monkeypatch):
    """Finished cells were keyed by (sequence spec, crf label, tracker) and runtime/bundle only, and
    encodes by sequence name and label: a --filter NAME given another -vf chain or --filter-crf, or a
    sequence folder rewritten in place (a new zoom copy), reused the old encode and the old scores."""
    seq = tiny_sequence(tmp_path / "seq", 64)
    encodes = []
    monkeypatch.setattr(R, "encode", lambda s, crf, out, vf="": encodes.append(out.name) or out)
    monkeypatch.setattr(R, "video_size", lambda path: (64, 64))
    calls = []
    kw = dict(sequences=(str(seq),), crfs=(18,), trackers=("bytetrack",), diff=(), original=False,
              out_dir=str(tmp_path / "out"))
    run = lambda **extra: R.run_study(ReencodeConfig(**{**kw, **extra}), fake_tracker(calls), progress=False)  # noqa: E731
    run(filters=("dark=eq=brightness=-0.2",))
    run(filters=("dark=eq=brightness=-0.2",))
    assert len(calls) == 2  # nothing changed: both cells reused
    run(filters=("dark=eq=brightness=-0.4",))
    assert len(calls) == 3 and calls[-1][0].startswith("tiny.dark.") and encodes[-1] != encodes[1]  # the filter cell only
    run(filters=("dark=eq=brightness=-0.4",), filter_crf=30)
    assert len(calls) == 4
    (seq / "gt" / "gt.txt").write_text("1,1,5,5,20,30,1,-1,-1,-1\n")  # the sequence rewritten in place
    run(filters=("dark=eq=brightness=-0.4",), filter_crf=30)
    assert len(calls) == 6


@pytest.mark.parametrize("hota, want", [
    ({"12": (0.50, 0.45), "18": (0.52, 0.53)}, {"per_crf": {"12": 5.0, "18": -1.0}, "min": -1.0, "max": 5.0, "range": 6.0}),
    ({"original": (0.625, 0.549)}, {"per_crf": {"original": 7.6}, "min": 7.6, "max": 7.6, "range": 0.0}),
])
def test_differences_per_crf_and_range(hota, want):
    cells = [{"sequence": "S", "crf": crf, "tracker": t, "HOTA": v} for crf, (a, b) in hota.items()
             for t, v in (("hybrid", a), ("bytetrack", b))]
    cells.append({"sequence": "S", "crf": "99", "tracker": "hybrid", "HOTA": 0.9})  # no partner: left out
    got = R.differences(cells, "hybrid", "bytetrack")
    assert got == {"S": want}  # rounded to 0.01 point
    md = R.diff_markdown({"../data/S:1-9": got["S"]}, "hybrid", "bytetrack")
    assert md.splitlines()[2].startswith("| S:1-9 | ") and f"| {want['range']:.1f} |" in md and "99" not in md


# -- what it refuses ------------------------------------------------------------------------------------------
def test_missing_ffmpeg_is_said(tud_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(R.shutil, "which", lambda name: None)
    cfg = ReencodeConfig(sequences=(str(tud_dir),), crfs=(18,), trackers=("bytetrack",), diff=(), out_dir=str(tmp_path))
    with pytest.raises(VsdmotError, match="needs ffmpeg"):
        R.run_study(cfg, progress=False)
    assert R.main(["--seq", str(tud_dir), "--tracker", "bytetrack", "--out", str(tmp_path)]) == 1
    assert "needs ffmpeg" in capsys.readouterr().err
    assert not (tmp_path / "cells.jsonl").exists()  # checked before any work


@pytest.mark.parametrize("kw, exception", [
    ({"crfs": (52,)}, "crf"),
    ({"trackers": ("sort",)}, "tracker"),
    ({"trackers": ("hybrid", "e2e")}, "diff"),  # the default diff names bytetrack
    ({"diff": ("hybrid",)}, "diff"),
    ({"threads": 0}, "threads"),
    ({"sequences": ()}, "at least one"),
    ({"sequences": ("TUD:1-500",)}, "frames|MOTChallenge"),
])
def test_config_refuses(tud_dir, kw, exception):
    kw.setdefault("sequences", (str(tud_dir),))
    kw["sequences"] = tuple(s.replace("TUD", str(tud_dir)) for s in kw["sequences"])
    with pytest.raises(ValueError, match=exception):
        ReencodeConfig(**kw)


def test_sequence_needs_gt(tmp_path):
    (tmp_path / "seqinfo.ini").write_text("[Sequence]\nname=x\nseqLength=3\n")
    with pytest.raises(ValueError, match="gt/gt.txt"):
        R.split_spec(str(tmp_path))


def test_window_beyond_the_sequence_is_refused(tud_dir):
    with pytest.raises(ValueError, match="frames: expected 1 <= A <= B <= 71"):
        R.split_spec(f"{tud_dir}:60-80")



def test_a_rescaling_filter_is_tracked_and_scored_in_the_sequence_pixels(tud_dir, ffmpeg, tmp_path):
    """An ffmpeg -vf degradation the library lacks; a half-size encode's rows come back at 640x480."""
    cfg = ReencodeConfig(sequences=(f"{tud_dir}:1-8",), crfs=(), filters=("half=scale=320:240",),
                         trackers=("bytetrack",), diff=(), original=False, out_dir=str(tmp_path))
    (cell,) = R.run_study(cfg, progress=False)
    assert cell["crf"] == "half" and cell["HOTA"] > 0.2  # boxes at half scale would barely overlap the gt
    assert R.video_size(next((tmp_path / "encodes").glob("TUD-Campus.half.*.mp4"))) == (320, 240)
    rows = read_rows(tmp_path / "results" / "TUD-Campus.half.bytetrack.txt")
    assert (rows.xywh[:, 0] + rows.xywh[:, 2]).max() > 330  # mapped back: beyond the encode's width


def test_rows_map_back_to_the_sequence_size(tmp_path):
    res = tmp_path / "r.txt"
    res.write_text("1,3,10.00,20.00,30.00,40.00,0.9000,-1,-1,-1\n")
    seq = type("Info", (), {"width": 640, "height": 480})()  # what read_seqinfo gives: width, height
    R.to_sequence_pixels(res, (320, 240), seq)
    assert res.read_text() == "1,3,20.00,40.00,60.00,80.00,0.9000,-1,-1,-1\n"
    R.to_sequence_pixels(res, (640, 480), seq)  # the sequence's own size: untouched
    assert res.read_text() == "1,3,20.00,40.00,60.00,80.00,0.9000,-1,-1,-1\n"


@pytest.mark.parametrize("filters", [("bad",), ("=scale=1:1",), ("12=scale=2:2",), ("a=x", "a=y"), ("original=x",)])
def test_bad_filters_are_refused(tud_dir, filters):
    with pytest.raises(ValueError, match="filters"):
        ReencodeConfig(sequences=(str(tud_dir),), filters=filters)


def test_crf_may_be_given_empty_for_filter_only_runs():
    a = R.build_parser().parse_args(["--seq", "S", "--crf", "--filter", "half=scale=320:240"])
    assert a.crf == [] and a.filter == ["half=scale=320:240"]
