"""Track a camera, stream, video, image folder or MOTChallenge sequence and write the results.

    vsdmot-edge run (--camera /dev/videoN | --source FILE_OR_URL_OR_DIR | --demo) [--bundle DIR]
        [--backend auto|onnxruntime|tensorrt|torch] [--semantic auto|always|never]
        [--tracker e2e|hybrid|bytetrack] [--camera-motion off|auto|on] [--mot-out FILE] [--jsonl-out FILE]
        [--video-out FILE] [--stats-out FILE] [--rotate-mb MB] [--keep-files N] [--max-frames N] [--config FILE]

Order matters for "nothing already written is lost": the config, the bundle (schema, hashes), the
networks and the source are all checked before any output file is opened, and the run loop
closes (flushes) the sinks whatever stops it.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any

from vsdmot._cli import handling

log = logging.getLogger(__name__)

ASSETS = Path(__file__).resolve().parents[1] / "runtime" / "assets"
DEMO_CLIP = ASSETS / "demo.mp4"

# CLI flag -> config key; a flag left unset keeps the config file's (or the default) value.
OVERRIDES = {
    "camera": "source.camera", "source": "source.source", "width": "source.width", "height": "source.height",
    "fps": "source.fps", "fourcc": "source.fourcc", "loop": "source.loop", "rotate": "source.rotate",
    "bundle": "pipeline.bundle", "backend": "pipeline.backend", "threads": "pipeline.threads", "spin": "pipeline.spin",
    "overlap": "pipeline.overlap", "precision": "pipeline.precision", "semantic": "semantics.policy", "tracker": "tracker.kind",
    "camera_motion": "tracker.camera_motion",
    "mot_out": "sinks.mot_out", "jsonl_out": "sinks.jsonl_out", "video_out": "sinks.video_out",
    "stats_out": "sinks.stats_out", "rotate_mb": "sinks.rotate_mb", "keep_files": "sinks.keep_files",
    "max_frames": "max_frames",
}


CAMERA_KEYS = ("source.width", "source.height", "source.fps", "source.fourcc")  # a camera's capture settings


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group()
    src.add_argument("--camera", metavar="DEV", help="V4L2 camera (/dev/video0 or 0) or csi://N on a Jetson")
    src.add_argument("--source", metavar="PATH_OR_URL", help="video file, image folder, MOTChallenge sequence or stream URL")
    src.add_argument("--demo", action="store_true", help="the shipped demo clip (PETS09-S2L1 excerpt, 640x480)")
    p.add_argument("--bundle", metavar="DIR", help="model bundle (default: the shipped runtime/assets/default)")
    p.add_argument("--backend", choices=("auto", "onnxruntime", "tensorrt", "torch"),
                   help="auto = TensorRT with a GPU, else onnxruntime; torch = the training reference")
    p.add_argument("--semantic", choices=("auto", "always", "never"), help="semantic policy (default auto)")
    p.add_argument("--tracker", choices=("e2e", "hybrid", "bytetrack"), help="tracker (default: the bundle's)")
    for flag, what in (("mot-out", "MOTChallenge results"), ("jsonl-out", "per-frame JSON lines"),
                       ("video-out", "annotated video (.avi MJPG survives a kill)"), ("stats-out", "run statistics JSON")):
        p.add_argument(f"--{flag}", metavar="FILE", help=what)
    p.add_argument("--rotate-mb", type=float, metavar="MB",
                   help="start a new MOT, JSONL or video file when one reaches MB; the full one is kept as "
                        "FILE.<UTC time> (default 0: one file per run)")
    p.add_argument("--keep-files", type=int, metavar="N",
                   help="earlier files kept per output, at a restart and at each rotation (default 5)")
    p.add_argument("--max-frames", type=int, metavar="N", help="stop after N frames")
    p.add_argument("--config", metavar="FILE", help="TOML run config (flags override it)")
    add_source_options(p)
    tune = p.add_argument_group("tuning")
    tune.add_argument("--threads", type=int, help="onnxruntime threads per network (0 = all cores)")
    tune.add_argument("--spin", action="store_true", default=None,
                      help="let onnxruntime workers busy-wait between runs (only helps on an idle CPU)")
    tune.add_argument("--overlap", action="store_true", default=None,
                      help="perceive (quality, semantics, detector) the next frame in a second thread while this one "
                           "is tracked: more frames per second, up to one frame more latency (docs/runtime.md)")
    tune.add_argument("--precision", choices=("auto", "fp32", "fp16", "int8"),
                      help="TensorRT engine precision (default auto: int8 for an --int8 bundle, else fp16)")
    service = _service_module()
    if service is not None:
        service.add_run_arguments(p)


def add_source_options(p: argparse.ArgumentParser, loop: bool = True) -> None:
    """How frames are captured and turned: `run`'s, and `profile`'s (which loops files itself), so a
    camera is profiled in the mode the service runs it."""
    cam = p.add_argument_group("camera and source options")
    cam.add_argument("--width", type=int, help="capture width in pixels")
    cam.add_argument("--height", type=int, help="capture height in pixels")
    cam.add_argument("--fps", type=float, help="capture frame rate, or a file's true rate")
    cam.add_argument("--fourcc", help="capture pixel format, e.g. MJPG or YUYV")
    if loop:
        cam.add_argument("--loop", action="store_true", default=None, help="replay a file source forever (soak runs)")
    cam.add_argument("--rotate", type=int, choices=(0, 90, 180, 270), metavar="DEG",
                     help="turn every frame DEG clockwise (0, 90, 180, 270) for a camera mounted sideways or upside "
                          "down; outputs are in the turned frame")
    cam.add_argument("--camera-motion", choices=("off", "auto", "on"),
                     help="move the tracks with the camera (hand-held, panning, on a vehicle): auto (default) probes "
                          "a frame pair in 15 and follows a camera that moves; on estimates every frame (~1 ms)")


def _service_module():
    """vsdmot.edge.service (systemd notify, health server) when it is installed, else None."""
    try:
        return importlib.import_module("vsdmot.edge.service")
    except ModuleNotFoundError as e:
        if e.name != "vsdmot.edge.service":
            raise
        return None


def build_config(args: argparse.Namespace):
    """The run config: defaults, then --config, then the flags that were given."""
    from vsdmot.runtime.config import SourceConfig, load_config

    overrides = {key: getattr(args, flag) for flag, key in OVERRIDES.items() if getattr(args, flag, None) is not None}
    if getattr(args, "demo", False):
        overrides["source.source"] = str(DEMO_CLIP)
    if "source.source" in overrides:  # a source flag replaces the config file's source, whichever kind it is
        overrides["source.camera"] = ""
        if args.config and load_config(args.config).source.camera:  # the camera's capture settings go with it:
            for key in CAMERA_KEYS:  # its fps would retime the file (fps is also a file's true rate)
                overrides.setdefault(key, getattr(SourceConfig(), key.split(".")[1]))  # back to the default
    elif "source.camera" in overrides:
        overrides["source.source"] = ""
    cfg = load_config(args.config, overrides)
    if not (cfg.source.camera or cfg.source.source):
        raise ValueError("run: expected a source: --camera DEV, --source PATH_OR_URL or --demo (or [source] in --config)")
    if cfg.source.camera and cfg.source.source:
        raise ValueError(f"run: expected one source, got both [source] camera and source in {args.config}: comment "
                         "out one of them")
    check_output_paths(cfg, args.config)
    return cfg


def overlap_for(cfg, pipeline) -> bool:
    """`pipeline.overlap`, except on the TensorRT backend: its CUDA context may belong to the main
    thread (pycuda), and the overlap runs the detector in a second one; not run on a device yet."""
    if cfg.pipeline.overlap and "tensorrt" in pipeline.backend_kind:  # any network (auto may mix them)
        log.warning("--overlap: not with the TensorRT backend yet (its CUDA context may be the main thread's, and "
                    "the overlap was not run on a device); running without it")
        return False
    return cfg.pipeline.overlap


def check_output_paths(cfg, config_path: str | None = None) -> None:
    """ValueError when two outputs are one file (their writes would interleave), an output is the
    source or the config (a sink replaces or moves its file aside, so the input would be lost), or
    lies inside the bundle, is a folder, or cannot be written: all before the networks load."""
    from vsdmot.runtime.bundle import DEFAULT_BUNDLE

    outputs = {f"--{name.replace('_', '-')}": getattr(cfg.sinks, name) for name in cfg.sinks.PATHS}
    inputs = {"--source": cfg.source.source, "--config": config_path or ""}
    bundle = Path(cfg.pipeline.bundle or DEFAULT_BUNDLE).resolve()  # the shipped one too (an editable checkout)
    seen: dict[Path, str] = {}
    for flag, path in outputs.items():
        if not path:
            continue
        real = Path(path).resolve()
        folder = Path(path).absolute().parent.resolve()  # the file itself may be a link out of the bundle
        if folder == bundle or bundle in folder.parents:  # next start: hash mismatch
            raise ValueError(f"run: {flag} {path} is inside the bundle {bundle}; expected a path "
                             "outside it (the bundle's files are checked at every start)")
        for other, given in inputs.items():
            if given and "://" not in given and Path(given).expanduser().resolve() == real:  # a URL is no file
                raise ValueError(f"run: {flag} {path} is the {other} file; expected a different path "
                                 "(writing it would destroy the input)")
        if real in seen:
            raise ValueError(f"run: {flag} and {seen[real]} are the same file ({path}); expected one path per output")
        seen[real] = flag
        _check_place(flag, Path(path))


def _check_place(flag: str, path: Path) -> None:
    """ValueError for an output that is a folder or lies where this user cannot write: found now,
    not after the networks load (a first TensorRT build takes minutes). Nothing is created here;
    the sink itself makes the missing folders when it opens."""
    if path.is_dir():
        raise ValueError(f"run: {flag} {path} is a folder; expected a file path (e.g. {path / 'out'})")
    if path.exists():  # a file (moved aside when the sink opens), a pipe or a device: its folder is checked below
        if not path.is_file() and not os.access(path, os.W_OK):
            raise ValueError(f"run: {flag} {path}: not writable by this user")
        if not path.is_file():
            return
    folder = next(a for a in path.absolute().parents if a.exists())  # the nearest folder that exists
    if not folder.is_dir() or not os.access(folder, os.W_OK | os.X_OK):
        raise ValueError(f"run: {flag} {path}: cannot create files in {folder} (not a writable folder for this user)")


def output_size_notes(sinks, endless: bool) -> list[str]:
    """What may fill the disk: a growing output file of an endless run (a camera, a stream, --loop)
    without --rotate-mb, or a folder with less free space than the rotated files may take. Pipes and
    devices (/dev/stdout) fill nothing."""
    import shutil

    growing = {f"--{n.replace('_', '-')}": Path(getattr(sinks, n)) for n in ("mot_out", "jsonl_out", "video_out")
               if getattr(sinks, n)}
    growing = {flag: path for flag, path in growing.items() if path.is_file() or not path.exists()}
    if not growing:
        return []
    if not sinks.rotate_mb:
        return [f"{', '.join(growing)}: this source has no end and --rotate-mb is not set, so the output grows until "
                "the disk is full (at 30 FPS with 6 people, a day of MOT rows is ~0.8 GB, of JSON lines ~1.5 GB); "
                "--rotate-mb 100 bounds it"] if endless else []
    need = (sinks.keep_files + 1) * sinks.rotate_mb * 1e6
    notes = []
    for flag, path in growing.items():
        folder = next(p for p in (path.parent, *path.parent.parents) if p.exists())  # the file's folder may not exist yet
        free = shutil.disk_usage(folder).free
        if free < need:
            notes.append(f"{flag}: {path.parent} has {free / 1e6:.0f} MB free, less than the {need / 1e6:.0f} MB its "
                         f"rotated files may take ((--keep-files {sinks.keep_files} + 1) x --rotate-mb {sinks.rotate_mb:g})")
    return notes


def torch_modules(cfg):
    """With --backend torch, the torch reference's module for each ONNX file (models/reference.py,
    which needs the training extra); None otherwise."""
    from vsdmot.runtime.errors import DeviceError

    if cfg.pipeline.backend != "torch":
        return None
    try:
        from vsdmot.models.reference import module_for_onnx
    except ImportError as e:
        raise DeviceError(f"--backend torch needs the training extra (pip install 'vsdmot[train]'): {e}") from None
    return module_for_onnx


def thread_note(threads: int, cores: int | None) -> str | None:
    """A warning when --threads asks for more threads per network than the machine has cores: each
    network's onnxruntime pool then preempts itself (`--threads 999` on 2 cores ran at 6.5 FPS)."""
    if cores and threads > cores:
        return (f"--threads {threads} is more than this machine's {cores} cores: each network's threads compete "
                f"for them and the run slows down; use --threads {cores} or fewer (0 = all cores)")
    return None


def open_bundle(path: str):
    """The bundle at `path`, or the shipped default; BundleError says what is wrong."""
    from vsdmot.runtime.bundle import DEFAULT_BUNDLE, load_bundle
    from vsdmot.runtime.errors import BundleError

    if path:
        return load_bundle(path)
    if not (DEFAULT_BUNDLE / "manifest.json").is_file():
        raise BundleError(f"the shipped default bundle is missing ({DEFAULT_BUNDLE}); build it with "
                          "`vsdmot-export --fp32 --out runtime/assets/default` or pass --bundle DIR")
    return load_bundle(DEFAULT_BUNDLE)


def open_source(cfg) -> Any:
    """Camera, stream, file, folder or sequence through vsdmot.edge.sources (edge-io's entry).
    Under a service manager ($NOTIFY_SOCKET) a camera or stream that cannot open yet is retried in
    the background: failing at once let Restart= use up the start limit while an IP camera booted."""
    import dataclasses
    import os

    from vsdmot.edge import sources
    from vsdmot.runtime.errors import SourceError

    sc = cfg.source
    opts = sources.live_options(sc, cfg.service)
    try:
        return sources.rotated(sources.open_source(camera=sc.camera or None, source=sc.source or None, opts=opts),
                               sc.rotate)
    except SourceError as e:
        if not os.environ.get("NOTIFY_SOCKET"):
            raise
        opts = dataclasses.replace(opts, wait_for_device=True)  # files ignore it and raise again
        source = sources.open_source(camera=sc.camera or None, source=sc.source or None, opts=opts)
        log.warning("%s; retrying in the background (READY=1 once a frame is processed)", e)
        return sources.rotated(source, sc.rotate)


def make_hooks(args: argparse.Namespace, cfg, source: Any = None, preview: Any = None) -> list:
    """A progress line (every 10 s on a terminal, every minute into a log), then the service's hooks
    (its health server serves `preview`)."""
    from vsdmot.edge.runner import ProgressHook

    every_s = 10.0 if sys.stderr.isatty() else 60.0
    total = getattr(source, "frame_count", 0)  # 0: unknown (live, --loop)
    total = min(total or cfg.max_frames, cfg.max_frames or total)
    hooks: list = [ProgressHook(total, every_s)]
    service = _service_module()
    return hooks + (list(service.make_hooks(args, cfg, source, preview)) if service is not None else [])


def run(args: argparse.Namespace) -> int:
    from vsdmot.edge.runner import drop_note, low_quality_hint, nothing_tracked_hint, pipeline_note

    with _outside_the_loop():
        summary = _run(args)
    for hint in (nothing_tracked_hint(summary), low_quality_hint(summary)):
        if hint:
            log.warning(hint)
    print(f"vsdmot-edge run: {summary.frames} frames, {summary.fps:.1f} FPS end to end{pipeline_note(summary)}, "
          f"semantics {semantic_note(summary.semantic)}, stopped by {summary.stopped_by}"
          f"{drop_note(summary.source_stats)}",
          file=sys.stderr)
    return 0


def _run(args: argparse.Namespace):
    """Config, bundle, source, pipeline and sinks, then the loop: its RunSummary."""
    from vsdmot.edge.runner import SourceStopEvent, run_loop
    from vsdmot.runtime.pipeline import build_pipeline
    from vsdmot.runtime.sinks import open_sinks

    cfg = build_config(args)
    if note := thread_note(cfg.pipeline.threads, os.cpu_count()):
        log.warning(note)
    service = _service_module()
    preview = service.make_preview(args, cfg) if service is not None else None  # a sink the health server shows
    bundle = open_bundle(cfg.pipeline.bundle)
    source = open_source(cfg)
    try:
        pipeline = build_pipeline(bundle, cfg, fps=source.fps, torch_modules=torch_modules(cfg))
        try:
            stop, hooks = SourceStopEvent(source), make_hooks(args, cfg, source, preview)
            reload, overlap = _reloader(args, pipeline, cfg), overlap_for(cfg, pipeline)
            endless = not (getattr(source, "frame_count", 0) or cfg.max_frames)
            for note in output_size_notes(cfg.sinks, endless):
                log.warning(note)
            if not any(getattr(cfg.sinks, n) for n in cfg.sinks.PATHS):
                log.info("no --mot-out, --jsonl-out, --video-out or --stats-out: the tracks are not saved")
            # the sinks open last: from here on run_loop closes them whatever happens
            sinks = open_sinks(**vars(cfg.sinks), fps=source.fps, source_stats=getattr(source, "stats", None),
                               meta=_meta(cfg, pipeline, source), live=getattr(source, "live", False))
            sinks += [preview] if preview is not None else []
            with _signals(stop, reload):
                summary = run_loop(source, pipeline, sinks, hooks, stop, cfg.max_frames, overlap=overlap)
        finally:
            pipeline.close()
    finally:
        source.close()
    return summary


@contextmanager
def _outside_the_loop():
    """SIGHUP, a reload mid-run, is ignored before the loop's own handlers are in (loading a bundle,
    a first TensorRT build: up to minutes) and after (it killed the process). SIGTERM keeps its
    default there: the process ends at once, even inside minutes of C++ work, and systemd counts a
    death by SIGTERM as a clean stop; a Python handler would wait for the build. Main thread only."""
    def hold(signum, frame):
        log.info("SIGHUP outside the run: ignored (the config is read as the run starts)")

    with handling((signal.SIGHUP,), hold):
        yield


def semantic_note(counts: dict) -> str:
    """{"fresh": 3, "reused": 0, "skipped": 177} -> "fresh 3 / reused 0 / skipped 177" (the stats file's
    semantic_runs / semantic_reused / semantic_skipped)."""
    return " / ".join(f"{k} {v}" for k, v in counts.items())


@contextmanager
def _signals(stop: threading.Event, reload_callback):
    """SIGTERM/SIGINT set `stop`: the service's handlers (STOPPING=1, SIGHUP reload) or plain ones."""
    service = _service_module()
    if service is None or threading.current_thread() is not threading.main_thread():
        from vsdmot.edge.runner import stop_on_signals

        with stop_on_signals(stop):
            yield
        return
    restore = service.install_signal_handlers(stop, reload_callback)
    try:
        yield
    finally:
        restore()


def _reloader(args: argparse.Namespace, pipeline, started):
    """SIGHUP with --config: re-read it and apply its [semantics] table (the rest needs a restart).
    `started`: the config the pipeline was built from (not the file now: it may have been edited
    during a first TensorRT build)."""
    if not args.config:
        return None

    def reload() -> None:
        cfg = build_config(args)
        if pipeline.semantics.student is None and cfg.semantics.policy != "never":
            raise ValueError(f"[semantics] policy {cfg.semantics.policy!r} needs the student, which this run "
                             "did not load (it started with 'never' or ByteTrack): restart to change that")
        pipeline.semantics.cfg = cfg.semantics
        log.info("reloaded [semantics] from %s: %s", args.config, cfg.semantics)
        pending = [f.name for f in fields(cfg) if f.name != "semantics" and getattr(cfg, f.name) != getattr(started, f.name)]
        if pending:
            log.warning("reload: %s changed in %s but only [semantics] applies live; restart to apply them%s",
                        ", ".join(f"[{n}]" for n in pending), args.config, _restart_hint())

    return reload


def _restart_hint(cgroup: str = "/proc/self/cgroup") -> str:
    """" (systemctl restart UNIT)" when this process runs in a service's own cgroup
    (`0::/system.slice/vsdmot-cam2.service`), else "" (a terminal's cgroup ends in a .scope)."""
    try:
        text = Path(cgroup).read_text()
    except OSError:
        return ""
    leaves = [line.rsplit("/", 1)[-1] for line in text.splitlines()]
    units = [leaf.removesuffix(".service") for leaf in leaves if leaf.endswith(".service")]
    return f" (systemctl restart {units[0]})" if units else ""


def _meta(cfg, pipeline, source) -> dict[str, Any]:
    from vsdmot.runtime.config import to_dict

    return {"source": getattr(source, "name", ""), "tracker": pipeline.tracker_kind,
            "backend": pipeline.backend_kind, "config": to_dict(cfg)}
