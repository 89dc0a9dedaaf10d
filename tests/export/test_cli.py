"""vsdmot-export arguments: the contract flags, bad input (exit 2), device targets off a device (exit 1)."""

from __future__ import annotations

import pytest

from vsdmot.export import chain, cli


def args(*argv):
    return cli.config_from_args(cli.build_parser().parse_args(list(argv)))


def test_defaults_are_the_device_bundle():
    cfg = args("--out", "x")
    assert cfg.precision == "int8" and cfg.ratio == chain.DEFAULT_PRUNE and cfg.method == chain.DEFAULT_METHOD
    assert args("--fp32", "--out", "x").ratio == 0.0
    assert args("--fp16", "--prune", "0.3", "--out", "x").ratio == 0.3


def test_flags_reach_the_config():
    cfg = args("--int8", "--calib", "a.mp4", "seq:1-600", "--method", "auto", "--force", "--max-hota-drop", "2",
               "--recover-seconds", "30", "--max-case-drop", "7", "--out", "x", "ckpt")
    assert cfg.calib == ("a.mp4", "seq:1-600") and cfg.method == "auto"
    assert cfg.gate.force and cfg.gate.max_hota_drop == 2 and cfg.recover.max_seconds == 30
    assert cfg.gate.max_case_drop == 7 and args("--out", "x").gate.max_case_drop == 5.0
    assert args("--out", "x").gate.max_hota_drop == 1.0  # the threshold, the documented default
    assert args("--out", "x").recover.max_seconds == 685.0
    assert args("--min-detection-f1", "0.96", "--out", "x").detection.min_f1 == 0.96
    assert args("--out", "x").detection.min_f1 == 0.0  # the detection rounds are opt-in (docs/export.md)
    assert args("--input-size", "416x256", "--out", "x").input_size == (256, 416)  # W x H in, (H, W) inside
    assert args("--input-size", "320", "--out", "x").input_size == (320, 320) and args("--out", "x").input_size is None


@pytest.mark.parametrize("argv", [["--prune", "1.2", "--out", "x"], ["--int8", "--fp32", "--out", "x"],
                                  ["--method", "kl", "--out", "x"], [],
                                  ["--min-detection-f1", "1.5", "--out", "x"],
                                  ["--input-size", "416x300", "--out", "x"], ["--input-size", "32x32", "--out", "x"],
                                  ["--input-size", "wide", "--out", "x"], ["--input-size", "416x320x3", "--out", "x"]])
def test_bad_arguments_exit_2(argv, capsys):
    with pytest.raises(SystemExit) as e:
        cli.main(argv)
    assert e.value.code == 2


@pytest.mark.parametrize("target,needs", [("tensorrt", "needs TensorRT"), ("torch-tensorrt", "needs torch-tensorrt")])
def test_device_targets_refuse_cleanly_here(target, needs, tmp_path, capsys):
    pytest.importorskip("torch")
    try:
        import tensorrt  # noqa: F401
        pytest.skip("TensorRT is importable here")
    except ImportError:
        pass
    assert cli.main(["--target", target, "--out", str(tmp_path / "b")]) == 1
    assert needs in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_torch_tensorrt_without_a_cuda_device_is_refused_before_exporting(tmp_path, capsys, monkeypatch):
    """torch-tensorrt can import beside a CPU-only torch; the compile would fail only after the export."""
    import sys
    import types

    monkeypatch.setitem(sys.modules, "torch_tensorrt", types.SimpleNamespace(__version__="2.5.0"))
    assert cli.main(["--target", "torch-tensorrt", "--out", str(tmp_path / "b")]) == 1
    assert "torch sees no CUDA device" in capsys.readouterr().err and not (tmp_path / "b").exists()


def test_missing_checkpoint_is_bad_input(tmp_path, capsys):
    assert cli.main(["--fp32", "--out", str(tmp_path / "b"), str(tmp_path / "nope.pt")]) == 2
    assert "no such file" in capsys.readouterr().err


def test_missing_calibration_source_is_refused_before_any_work(tmp_path, capsys):
    work = tmp_path / "work"
    argv = ["--int8", "--out", str(tmp_path / "b"), "--work-dir", str(work), "--calib", str(tmp_path / "no.mp4:1-50")]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert "--calib" in err and "no such file or folder" in err
    assert not work.exists() and not (tmp_path / "b").exists()  # nothing exported first


def test_out_that_is_a_file_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "f").write_text("keep")
    work = tmp_path / "work"
    assert cli.main(["--fp32", "--out", str(tmp_path / "f"), "--work-dir", str(work)]) == 2
    assert "is a file, not a bundle directory" in capsys.readouterr().err
    assert not work.exists() and (tmp_path / "f").read_text() == "keep"


def test_out_that_is_a_foreign_folder_is_refused_before_any_work(tmp_path, capsys):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    work = tmp_path / "work"
    assert cli.main(["--fp32", "--out", str(tmp_path / "mine"), "--work-dir", str(work)]) == 2
    assert "holds files that are not part of a bundle (notes.txt)" in capsys.readouterr().err
    assert not work.exists() and (tmp_path / "mine" / "notes.txt").read_text() == "keep"


def test_a_stray_manifest_or_a_bundle_with_added_files_is_not_replaced(tmp_path, capsys):
    """Any folder with a manifest.json counted as a bundle: `--out` on a web app's folder, or on a
    bundle a user had put notes and recordings in, deleted them."""
    import shutil

    from vsdmot.runtime.bundle import DEFAULT_BUNDLE

    app = tmp_path / "app"
    app.mkdir()
    (app / "manifest.json").write_text("{}")
    (app / "data.csv").write_text("precious")
    mine = tmp_path / "mine"
    shutil.copytree(DEFAULT_BUNDLE, mine)
    (mine / "recordings").mkdir()
    (mine / "recordings" / "cam1.mp4").write_text("precious")
    for out, named in ((app, "data.csv, manifest.json"), (mine, "recordings/cam1.mp4")):
        assert cli.main(["--fp32", "--out", str(out), "--work-dir", str(tmp_path / "work")]) == 2
        assert f"holds files that are not part of a bundle ({named})" in capsys.readouterr().err
    assert (app / "data.csv").read_text() == (mine / "recordings" / "cam1.mp4").read_text() == "precious"
    (mine / "recordings" / "cam1.mp4").unlink()
    (mine / "recordings").rmdir()
    from vsdmot.export.bundle import check_replaceable

    check_replaceable(mine)  # a bundle as exported may be replaced


@pytest.mark.parametrize("flags, sub", [(["--int8"], ""), (["--fp32", "--prune", "0.1"], ""),
                                         (["--fp32", "--input-size", "416x320"], ""), (["--fp32"], "nested")])
def test_out_onto_the_shipped_default_bundle_is_refused_before_any_work(tmp_path, capsys, flags, sub):
    """It was replaced: `--int8 --out runtime/assets/default` published an INT8 bundle over the shipped one."""
    from vsdmot.runtime.bundle import DEFAULT_BUNDLE

    before = {f.name: f.stat().st_mtime_ns for f in DEFAULT_BUNDLE.iterdir()}
    work = tmp_path / "work"
    assert cli.main([*flags, "--out", str(DEFAULT_BUNDLE / sub), "--work-dir", str(work)]) == 2
    assert "shipped default bundle" in capsys.readouterr().err and not work.exists()
    assert {f.name: f.stat().st_mtime_ns for f in DEFAULT_BUNDLE.iterdir()} == before


def test_the_default_bundles_own_recipe_may_rebuild_it():
    """docs/training.md rebuilds it with `vsdmot-export --fp32 --out runtime/assets/default`."""
    from vsdmot.runtime.bundle import DEFAULT_BUNDLE

    args = cli.build_parser().parse_args(["--fp32", "--out", str(DEFAULT_BUNDLE)])
    assert cli.is_default_recipe(cli.config_from_args(args), args.checkpoint)
    cli.check_out(DEFAULT_BUNDLE, default_recipe=True)  # no error
    int8 = cli.build_parser().parse_args(["--int8", "--out", str(DEFAULT_BUNDLE)])
    assert not cli.is_default_recipe(cli.config_from_args(int8), int8.checkpoint)


def test_out_in_an_unwritable_place_is_refused_before_any_work(tmp_path, capsys):
    work = tmp_path / "work"
    assert cli.main(["--fp32", "--out", "/proc/vsdmot-x", "--work-dir", str(work)]) == 2
    assert "cannot write in /proc" in capsys.readouterr().err and not work.exists()


def test_out_under_missing_folders_is_accepted(tmp_path):
    cli.check_out(tmp_path / "a" / "b" / "bundle")  # publish creates the parents
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("content", ["junk", "student"])
def test_a_file_that_is_not_the_network_is_one_line(content, tmp_path, capsys):
    """A random file, or the student's weights passed as the detector: exit 2, no traceback."""
    import shutil

    from vsdmot.models.detector import WEIGHTS_DIR

    ckpt = tmp_path / "w" / "detector.pt"
    ckpt.parent.mkdir()
    shutil.copy(WEIGHTS_DIR / "quality.json", ckpt.parent)  # checked first
    if content == "junk":
        ckpt.write_bytes(b"not a checkpoint" * 64)
    else:
        shutil.copy(WEIGHTS_DIR / "student.pt", ckpt)
    assert cli.main(["--fp32", "--out", str(tmp_path / "b"), "--work-dir", str(tmp_path / "work"), str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert f"CHECKPOINT {ckpt}: not a detector checkpoint" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "b").exists()


def test_a_checkpoint_without_quality_json_is_refused(tmp_path, capsys):
    """Every run reads quality.json: an export without it published a bundle that never loaded."""
    import shutil

    from vsdmot.models.detector import WEIGHTS_DIR

    ckpt = tmp_path / "w" / "detector.pt"
    ckpt.parent.mkdir()
    shutil.copy(WEIGHTS_DIR / "detector.pt", ckpt)
    assert cli.main(["--fp32", "--out", str(tmp_path / "b"), "--work-dir", str(tmp_path / "work"), str(ckpt)]) == 2
    err = capsys.readouterr().err
    assert f"CHECKPOINT {ckpt}: no quality.json beside it" in err and "Traceback" not in err
    assert not (tmp_path / "b").exists()


@pytest.mark.parametrize("work", ["b", "b/work"])
def test_work_dir_must_not_be_out_or_inside_it(tmp_path, capsys, work):
    """--out == --work-dir was found at publish time: minutes of work, then 'holds files that are not
    part of a bundle'. (--out inside --work-dir is fine.)"""
    code = cli.main(["--fp32", "--out", str(tmp_path / "b"), "--work-dir", str(tmp_path / work)])
    err = capsys.readouterr().err
    assert code == 2 and "expected a folder apart from the bundle" in err and not (tmp_path / "b").exists()
    cli.check_work_dir(tmp_path, tmp_path / "b")  # a work dir holding --out: accepted


def test_sigterm_becomes_exit_143_so_cleanup_runs():
    import os
    import signal

    cleaned = []
    with pytest.raises(SystemExit) as e, cli.terminate_as_exit():
        try:
            os.kill(os.getpid(), signal.SIGTERM)
        finally:
            cleaned.append(True)
    assert e.value.code == 143 and cleaned == [True]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL


@pytest.mark.parametrize("kind", ["not-a-video", "no-images"])
def test_unreadable_calibration_source_is_bad_input_before_any_work(kind, tmp_path, capsys):
    """A file that is no video, a folder with no images: exit 2 (bad input), before the reference export."""
    src = tmp_path / ("clip.mp4" if kind == "not-a-video" else "frames")
    if kind == "not-a-video":
        src.write_text("not a video")
    else:
        src.mkdir()
        (src / "readme.txt").write_text("no images here")
    work = tmp_path / "work"
    argv = ["--int8", "--out", str(tmp_path / "b"), "--work-dir", str(work), "--calib", str(src)]
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert f"--calib {src}:" in err and not work.exists() and not (tmp_path / "b").exists()


@pytest.mark.parametrize("bundle_precision,files,engines", [
    ("fp16", {"detector.onnx": "fp32", "tracker.onnx": "fp32"}, {"detector.onnx": "fp16", "tracker.onnx": "fp16"}),
    ("int8", {"detector.onnx": "fp32", "tracker.onnx": "int8"}, {"detector.onnx": "fp16", "tracker.onnx": "int8"}),
    ("fp32", {"detector.onnx": "fp32"}, {"detector.onnx": "fp16"})])
def test_prebuilt_engines_have_the_key_the_run_looks_up(bundle_precision, files, engines, monkeypatch, tmp_path):
    """`vsdmot-edge run --backend tensorrt` keys each network's engine by its precision, by default
    `auto` (runtime.backends.engine_precision of the file's precision: int8 for a Q/DQ file, else
    fp16), and the prebuild must build under the same keys. Before, a run took the bundle's
    precision for every network, so an --int8 bundle whose gate kept the detector FP32 built that
    detector's engine with the INT8 flag and no ranges."""
    from types import SimpleNamespace

    from vsdmot.runtime import backends, bundle, pipeline
    from vsdmot.runtime.config import load_config

    manifest = {"precision": bundle_precision, "files": {n: {"precision": p} for n, p in files.items()} | {
        "quality.json": {"role": "params"}}}
    fake = bundle.Bundle(tmp_path, manifest)
    built, opened = [], []
    monkeypatch.setattr(bundle, "load_bundle", lambda path: fake)
    cache = "/var/cache/vsdmot/engines"  # vsdmot-export --engine-cache, and the service's [pipeline] engine_cache
    monkeypatch.setattr(backends, "TensorRTBackend",
                        lambda path, precision, cache_dir: built.append((path.name, precision, cache_dir)) or
                        SimpleNamespace(close=lambda: None, key=SimpleNamespace(precision=precision)))
    cli.prebuild_engines(tmp_path, cache)
    assert sorted(built) == sorted((n, p, cache) for n, p in engines.items())
    monkeypatch.setattr(pipeline, "open_backend", lambda kind, path, precision, cache_dir, **kw:
                        opened.append((path.name, precision, cache_dir)))
    open_one = pipeline._opener(load_config(None, {"pipeline.backend": "tensorrt", "pipeline.engine_cache": cache}), [])
    for name in files:
        open_one(fake, name)
    assert sorted(opened) == sorted(built)  # the run looks up what was built


def test_tensorrt_that_imports_without_a_usable_gpu_is_refused_before_exporting(monkeypatch):
    """The TensorRT wheel imports on a machine without a usable GPU; its Builder() then fails ("pybind11::init():
    factory function returned nullptr" after "CUDA initialization failure"). Looking the class up passed, so
    --target tensorrt exported for minutes, published, and failed only when prebuilding the engines."""
    import sys
    from types import SimpleNamespace

    from vsdmot.runtime.errors import DeviceError

    def builder(logger):
        raise TypeError("pybind11::init(): factory function returned nullptr")

    fake = SimpleNamespace(__version__="10.3.0", Builder=builder)
    fake.Logger = type("Logger", (), {"ERROR": 4, "__init__": lambda self, level=None: None})
    monkeypatch.setitem(sys.modules, "tensorrt", fake)
    with pytest.raises(DeviceError, match="needs TensorRT"):
        cli.check_tensorrt()


def test_target_help_promises_what_the_target_does(capsys):
    """--target tensorrt prebuilds the engines after publishing (prebuild_engines), the INT8 ones on
    TensorRT < 10.1 through the legacy calibrator first (export/legacy_trt.py); the help once promised
    a calibration cache where the chain wrote none."""
    with pytest.raises(SystemExit):
        cli.main(["--help"])
    text = " ".join(capsys.readouterr().out.split())
    start = text.rindex("--target {")  # the option's entry, not the usage line
    target = text[start:text.index("--calib-quality {", start)]
    assert "prebuilds" in target and "calibration cache" not in target


@pytest.mark.parametrize("spec, refused", [("PETS09-S2L1", True), ("PETS09-S2L1:550-650", True),
                                           ("PETS09-S2L1:1-600", False), ("TUD-Campus:1-10", True)])
def test_calibrating_on_the_gate_s_held_out_frames_is_refused(spec, refused, tmp_path, capsys):
    """The gate scores held-out frames: INT8 ranges fit on them would make its verdict optimistic."""
    from helpers import DATA

    name, _, span = spec.partition(":")
    if not (DATA / name).is_dir():
        pytest.skip(f"needs ../shared/data/{name}")
    source = f"{DATA / name}:{span}" if span else str(DATA / name)
    if refused:
        instead = "calibrate on other sequences" if name == "TUD-Campus" else f"use {DATA / name}:1-600"
        with pytest.raises(ValueError, match=f"held-out frames \\(PETS09-S2L1 601-795, TUD-Campus.*; {instead}$"):
            cli.check_calib_paths([source])
    else:
        cli.check_calib_paths([source])


def test_an_image_folder_of_a_held_out_sequence_is_refused_too(tmp_path):
    """The check read the source's name, and an image folder is named after itself (img1)."""
    import cv2
    import numpy as np

    seq = tmp_path / "PETS09-S2L1"
    (seq / "img1").mkdir(parents=True)
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=PETS09-S2L1\nimDir=img1\nframeRate=7\nseqLength=795\n"
                                     "imWidth=64\nimHeight=48\nimExt=.jpg\n")
    for k in (601, 602):
        cv2.imwrite(str(seq / "img1" / f"{k:06d}.jpg"), np.full((48, 64, 3), 100, np.uint8))
    with pytest.raises(ValueError, match="PETS09-S2L1 frames \\(all\\) include"):
        cli.check_calib_paths([str(seq / "img1")])


def test_without_torch_help_works_and_an_export_says_what_to_install(tmp_path):
    """A device install has no torch: `vsdmot-export --help` died in a traceback (chain imports
    torch for its defaults), and so did an export."""
    import subprocess
    import sys

    code = ("import sys; sys.modules['torch'] = None\n"  # as if torch were not installed
            "from vsdmot.export.cli import main\nsys.exit(main(sys.argv[1:]))")
    helped = subprocess.run([sys.executable, "-c", code, "--help"], capture_output=True, text=True, timeout=60)
    assert helped.returncode == 0 and "--engine-cache" in helped.stdout
    ran = subprocess.run([sys.executable, "-c", code, "--fp32", "--out", str(tmp_path / "b")], capture_output=True,
                         text=True, timeout=60)
    assert ran.returncode == 1 and ran.stderr.strip().count("\n") == 0  # one line, no traceback
    assert "needs the Python package 'torch'" in ran.stderr and "PyTorch for Jetson" in ran.stderr


def test_an_export_without_the_gate_s_data_is_refused_before_any_work(tmp_path, monkeypatch, capsys):
    """A device install has no ../shared/data: the gate failed after the reference export, minutes in."""
    monkeypatch.setenv("VSDMOT_DATA", str(tmp_path / "nodata"))
    work = tmp_path / "work"
    assert cli.main(["--int8", "--out", str(tmp_path / "b"), "--work-dir", str(work)]) == 2
    err = capsys.readouterr().err
    assert "the accuracy gate tracks PETS09-S2L1, TUD-Campus and finds no such folder" in err and "VSDMOT_DATA" in err
    assert not work.exists()


def test_an_engine_cache_that_cannot_be_written_is_refused_before_any_work(tmp_path, capsys, monkeypatch):
    (tmp_path / "cache").write_text("a file, not a folder")
    work = tmp_path / "work"
    argv = ["--int8", "--target", "tensorrt", "--engine-cache", str(tmp_path / "cache" / "engines"), "--out",
            str(tmp_path / "b"), "--work-dir", str(work)]
    monkeypatch.setattr(cli, "check_tensorrt", lambda: None)  # TensorRT is not here: as on a device
    assert cli.main(argv) == 1
    err = capsys.readouterr().err
    assert "--engine-cache: cannot write" in err and not work.exists()


def test_out_inside_a_bundle_is_refused(tmp_path, capsys):
    """A bundle written into another one made the outer one impossible to re-export (it then held
    files not its own)."""
    from tinybundle import write_manifest

    (tmp_path / "site").mkdir()
    write_manifest(tmp_path / "site")
    argv = ["--fp32", "--out", str(tmp_path / "site" / "sub"), "--work-dir", str(tmp_path / "work")]
    assert cli.main(argv) == 2
    assert f"is inside the bundle {tmp_path / 'site'}" in capsys.readouterr().err and not (tmp_path / "work").exists()


def test_only_a_bundle_s_manifest_makes_a_folder_a_bundle(tmp_path):
    """A web project's manifest.json two folders up refused every --out below it."""
    (tmp_path / "manifest.json").write_text("{}")
    cli.check_out(tmp_path / "proj" / "mybundle")  # not refused


def test_a_pruned_fp32_export_needs_the_gate_s_data_too(tmp_path, monkeypatch):
    monkeypatch.setenv("VSDMOT_DATA", str(tmp_path / "nodata"))
    args = cli.build_parser().parse_args(["--fp32", "--prune", "0.1", "--out", str(tmp_path / "b")])
    with pytest.raises(ValueError, match="the accuracy gate tracks"):
        cli.check_gate_data(cli.config_from_args(args))
    cli.check_gate_data(cli.config_from_args(cli.build_parser().parse_args(["--fp32", "--out", str(tmp_path / "b")])))


def test_a_symlink_to_a_held_out_image_folder_is_refused(tmp_path):
    import cv2
    import numpy as np

    seq = tmp_path / "PETS09-S2L1"
    (seq / "img1").mkdir(parents=True)
    (seq / "seqinfo.ini").write_text("[Sequence]\nname=PETS09-S2L1\nimDir=img1\nframeRate=7\nseqLength=795\n"
                                     "imWidth=64\nimHeight=48\nimExt=.jpg\n")
    cv2.imwrite(str(seq / "img1" / "000601.jpg"), np.full((48, 64, 3), 100, np.uint8))
    (tmp_path / "frames").symlink_to(seq / "img1")
    with pytest.raises(ValueError, match="include the accuracy gate's held-out frames"):
        cli.check_calib_paths([str(tmp_path / "frames")])
