"""Run configuration: frozen dataclasses, one per component, nested, loaded from TOML.

    [source]     where frames come from
    [pipeline]   bundle, backend, detector thresholds
    [semantics]  the semantic policy (auto / always / never) and its cache
    [tracker]    which tracker and its thresholds (MOTRv2's by default)
      [tracker.slots]      the e2e and hybrid trackers' other knobs (runtime/e2e.py E2EConfig)
      [tracker.bytetrack]  ByteTrack's (runtime/bytetrack.py ByteTrackConfig)
    [sinks]      output files
    [service]    health server, stall detection, systemd watchdog

`load_config(path, overrides)` reads a TOML file (every key optional) and applies overrides
given as {"section.key": value}; an unknown section or key raises ValueError naming it and
the allowed ones, and a value of the wrong type or outside its choices raises ValueError too.
"""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from .bytetrack import ByteTrackConfig
from .e2e import E2EConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

BACKENDS = ("auto", "onnxruntime", "tensorrt", "torch")
PRECISIONS = ("auto", "fp32", "fp16", "int8")
POLICIES = ("auto", "always", "never")
TRACKERS = ("default", "e2e", "hybrid", "bytetrack")
CAMERA_MOTION = ("off", "auto", "on")  # [tracker] camera_motion (runtime/motion.py)


def _choice(section: str, name: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"[{section}] {name}: expected one of {list(allowed)}, got {value!r}")


def _positive(section: str, name: str, value: float, strict: bool = False) -> None:
    if value != value or value < 0 or (strict and value == 0):  # NaN (TOML has `nan`) compares false with anything
        raise ValueError(f"[{section}] {name}: expected {'> 0' if strict else '>= 0'}, got {value!r}")


@dataclass(frozen=True)
class SourceConfig:
    camera: str = ""  # /dev/videoN, a V4L2 index, or csi://N (Jetson); "" = not a camera
    source: str = ""  # video file, image folder, MOTChallenge sequence or stream URL
    width: int = 0  # camera capture width in pixels (0 = the device's default)
    height: int = 0  # camera capture height in pixels (0 = the device's default)
    fps: float = 0.0  # camera frame rate to request, or a file's true rate (0 = header / default)
    fourcc: str = ""  # camera pixel format, e.g. "MJPG" or "YUYV" ("" = the device's default)
    loop: bool = False  # restart a file source at its end (soak runs); live sources ignore it
    rotate: int = 0  # degrees clockwise every frame is turned before the pipeline (0, 90, 180, 270): a camera
    # mounted sideways or upside down; the detector was trained on upright people. Outputs are in the turned frame

    def __post_init__(self) -> None:
        _expand_home(self, "source")
        if self.rotate not in (0, 90, 180, 270):
            raise ValueError(f"[source] rotate: expected 0, 90, 180 or 270 (degrees clockwise), got {self.rotate!r}")
        for name in ("width", "height", "fps"):
            _positive("source", name, getattr(self, name))
        if self.fourcc and len(self.fourcc) != 4:
            raise ValueError(f"[source] fourcc: expected 4 characters, got {self.fourcc!r}")


@dataclass(frozen=True)
class PipelineConfig:
    bundle: str = ""  # model bundle folder ("" = the shipped default, runtime/assets/default)
    backend: str = "auto"  # auto = tensorrt with a GPU, else onnxruntime; or onnxruntime/tensorrt/torch
    precision: str = "auto"  # TensorRT engine precision; auto = int8 for an --int8 bundle, else fp16
    threads: int = 0  # onnxruntime intra-op threads per network (0 = all cores)
    spin: bool = False  # onnxruntime workers busy-wait between runs (faster only on an otherwise idle CPU)
    overlap: bool = False  # the run loop perceives frame t+1 while tracking frame t (edge/runner.py `overlapped`)
    engine_cache: str = ""  # TensorRT engine cache ("" = $VSDMOT_ENGINE_CACHE, else ~/.cache/vsdmot/engines)
    score_thr: float = 0.1  # detector proposal score floor (the tracker applies its own thresholds)
    nms_thr: float = 0.45  # detector NMS IoU threshold

    def __post_init__(self) -> None:
        _expand_home(self, "bundle", "engine_cache")
        _choice("pipeline", "backend", self.backend, BACKENDS)
        _choice("pipeline", "precision", self.precision, PRECISIONS)
        _positive("pipeline", "threads", self.threads)
        for name in ("score_thr", "nms_thr"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"[pipeline] {name}: expected a value in [0, 1], got {getattr(self, name)!r}")


@dataclass(frozen=True)
class SemanticsConfig:
    policy: str = "auto"  # auto = skip / reuse / compute by w and q; always; never
    eps_off: float = 0.05  # auto: semantics switch off when w falls below this
    eps_on: float = 0.10  # auto: and back on only when w rises to this (hysteresis, >= eps_off)
    delta: float = 0.05  # auto: reuse the cached vector while |q - q_cached| < delta ...
    max_age: int = 15  # auto: ... and it is younger than this many frames

    def __post_init__(self) -> None:
        _choice("semantics", "policy", self.policy, POLICIES)
        for name in ("eps_off", "eps_on", "delta"):
            _positive("semantics", name, getattr(self, name))
        if self.eps_on < self.eps_off:
            raise ValueError(f"[semantics] eps_on: expected >= eps_off ({self.eps_off}), got {self.eps_on}")
        _positive("semantics", "max_age", self.max_age)


MOTR_KNOBS = {"birth": "birth_score", "keep": "keep_score", "miss_tolerance": "miss_tolerance",
              "output_score": "output_score", "min_area": "min_area"}  # E2EConfig field -> its [tracker] key
READ_BY = {"birth_score": ("e2e",), "keep_score": ("e2e",), "miss_tolerance": ("e2e", "hybrid"),
           "output_score": ("e2e", "hybrid"), "min_area": ("e2e", "hybrid")}  # the trackers that read each key


@dataclass(frozen=True)
class TrackerConfig:
    kind: str = "default"  # default = the bundle's choice; or e2e / hybrid / bytetrack
    birth_score: float = 0.5  # e2e: a new track is born from a query scoring at least this (MOTRv2)
    keep_score: float = 0.5  # e2e: a track query scoring below this counts as a miss (MOTRv2)
    miss_tolerance: int = 20  # e2e, hybrid: steps (frames seen) a track survives unseen before its slot is freed (MOTRv2)
    output_score: float = 0.6  # e2e, hybrid: only tracks scoring at least this are written out (MOTRv2)
    min_area: float = 100.0  # e2e, hybrid: boxes smaller than this many square pixels are not written (MOTRv2)
    camera_motion: str = "auto"  # off / auto (probe, follow a moving camera) / on (every frame): runtime/motion.py
    slots: E2EConfig = field(default_factory=E2EConfig)  # [tracker.slots]: e2e and hybrid, the rest (new_score, ...)
    bytetrack: ByteTrackConfig = field(default_factory=ByteTrackConfig)  # [tracker.bytetrack]: track_thresh, ...

    def __post_init__(self) -> None:
        _choice("tracker", "kind", self.kind, TRACKERS)
        _choice("tracker", "camera_motion", self.camera_motion, CAMERA_MOTION)
        for name in ("birth_score", "keep_score", "output_score"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"[tracker] {name}: expected a value in [0, 1], got {getattr(self, name)!r}")
        _positive("tracker", "miss_tolerance", self.miss_tolerance)
        _positive("tracker", "min_area", self.min_area)
        for name, key in MOTR_KNOBS.items():  # one place to set each: [tracker] keeps MOTRv2's names
            if getattr(self.slots, name) != getattr(E2EConfig(), name):
                raise ValueError(f"[tracker.slots] {name}: set [tracker] {key} instead")

    def slot_config(self) -> E2EConfig:
        """What the e2e and hybrid trackers run with: [tracker.slots] and the five MOTRv2 keys."""
        return replace(self.slots, **{name: getattr(self, key) for name, key in MOTR_KNOBS.items()})

    def unread(self, kind: str) -> list[str]:
        """[tracker] keys set away from their defaults that the `kind` tracker does not read."""
        default = TrackerConfig()
        return [key for key, readers in READ_BY.items()
                if kind not in readers and getattr(self, key) != getattr(default, key)]


@dataclass(frozen=True)
class SinksConfig:
    mot_out: str = ""  # MOTChallenge results file (frame,id,x,y,w,h,conf,-1,-1,-1)
    jsonl_out: str = ""  # one JSON line per frame: index, timestamp, q, w, semantic state, tracks
    video_out: str = ""  # annotated video (boxes, IDs, quality bar)
    stats_out: str = ""  # run statistics JSON (frames, fps, semantic counts, latency percentiles)
    rotate_mb: float = 0.0  # a MOT, JSONL or video file reaching this many MB is moved aside for a new one (0 = never)
    keep_files: int = 5  # earlier files kept per output (NAME.<UTC time>), at a restart and at each rotation

    PATHS = ("mot_out", "jsonl_out", "video_out", "stats_out")

    def __post_init__(self) -> None:
        _expand_home(self, *self.PATHS)
        _positive("sinks", "rotate_mb", self.rotate_mb)
        if not math.isfinite(self.rotate_mb):
            raise ValueError(f"[sinks] rotate_mb: expected a size in MB (0 = never), got {self.rotate_mb!r}")
        _positive("sinks", "keep_files", self.keep_files)


POWER_METERS = ("jtop", "ina3221", "nvml", "rapl")  # edge/power.py's meters, in the order they are tried


@dataclass(frozen=True)
class ServiceConfig:
    health_listen: str = "127.0.0.1:9108"  # HOST:PORT of the health / metrics HTTP server ("", "off" or "none" = off)
    stall_timeout_s: float = 5.0  # no fresh frame for this many seconds counts as a stall
    watchdog: bool = True  # feed the systemd watchdog (WATCHDOG=1) on fresh frames only
    preview: bool = False  # serve the annotated frames at /preview and /preview.jpg (edge/preview.py)
    power_meter: str = ",".join(POWER_METERS)  # meters to try for /metrics, in order ("none" = no power metrics)

    def __post_init__(self) -> None:
        _positive("service", "stall_timeout_s", self.stall_timeout_s, strict=True)
        bad = [m for m in self.power_meter.split(",") if m and m not in (*POWER_METERS, "none")]
        if bad:
            raise ValueError(f"[service] power_meter: expected a comma-separated list of {', '.join(POWER_METERS)} "
                             f"(or none), got {bad[0]!r}")
        if self.health_listen in ("off", "none"):  # the words --health-listen takes
            object.__setattr__(self, "health_listen", "")  # frozen: set once, while building
        if self.health_listen:
            try:
                parse_listen(self.health_listen)
            except ValueError:
                raise ValueError(f"[service] health_listen: expected HOST:PORT, or \"off\" for no health server, "
                                 f"got {self.health_listen!r}") from None


def _expand_home(cfg: Any, *names: str) -> None:
    """`~` / `~user` at the start of these path keys becomes the home folder: TOML and `--flag=~/x`
    reach us unexpanded, and `mot_out = "~/x"` made a folder named `~`. A relative path stays
    relative to the working directory (a service's is its WorkingDirectory, /var/lib/vsdmot)."""
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, str) and value.startswith("~"):
            object.__setattr__(cfg, name, os.path.expanduser(value))  # frozen: set once, while building


def parse_listen(text: str) -> tuple[str, int]:
    """"HOST:PORT" or "[v6]:PORT" -> (host, port): the one parser of the health server's address
    (config, `--health-listen`, the server, `service status` and the install's port choice)."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"health listen address: expected HOST:PORT (e.g. 127.0.0.1:9108), got {text!r}")
    return host, int(port)


@dataclass(frozen=True)
class RunConfig:
    source: SourceConfig = field(default_factory=SourceConfig)  # [source]
    pipeline: PipelineConfig = field(default_factory=PipelineConfig)  # [pipeline]
    semantics: SemanticsConfig = field(default_factory=SemanticsConfig)  # [semantics]
    tracker: TrackerConfig = field(default_factory=TrackerConfig)  # [tracker]
    sinks: SinksConfig = field(default_factory=SinksConfig)  # [sinks]
    service: ServiceConfig = field(default_factory=ServiceConfig)  # [service]
    max_frames: int = 0  # stop after this many frames (0 = until the source ends or a signal)

    def __post_init__(self) -> None:
        if self.max_frames < 0:  # a top-level key: there is no [run] table to name
            raise ValueError(f"max_frames (--max-frames, or a top-level config key): expected >= 0, got {self.max_frames!r}")


def load_config(path: str | os.PathLike | None = None, overrides: Mapping[str, Any] | None = None) -> RunConfig:
    """Defaults, then the TOML file at `path` (if any), then `overrides` {"section.key": value}."""
    data: dict[str, Any] = {}
    if path is not None:
        path = Path(path).expanduser()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ValueError(f"config: no file at {path}") from None
        except tomllib.TOMLDecodeError as e:
            raise ValueError(f"config {path}: not valid TOML: {e}") from None
    for dotted, value in (overrides or {}).items():
        _set_dotted(data, dotted, value)
    return from_dict(data)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    """{"tracker.bytetrack.track_buffer": 60} -> data["tracker"]["bytetrack"]["track_buffer"] = 60."""
    *tables, key = dotted.split(".")
    target = data
    for depth in range(len(tables)):
        target = target.setdefault(tables[depth], {})
        if not isinstance(target, dict):
            raise ValueError(f"config: [{'.'.join(tables[:depth + 1])}] must be a table, got {type(target).__name__}")
    target[key] = value


def from_dict(data: Mapping[str, Any], cls: type = RunConfig, where: str = "config") -> Any:
    """Build `cls` from nested mappings; unknown keys and wrong types raise ValueError."""
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"{where}: unknown key {unknown[0]!r}; allowed: {sorted(fields)}")
    kwargs = {name: _convert(fields[name], value, f"{where}.{name}") for name, value in data.items()}
    return cls(**kwargs)


def _convert(f: dataclasses.Field, value: Any, where: str) -> Any:
    default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
    if dataclasses.is_dataclass(default):
        if not isinstance(value, Mapping):
            raise ValueError(f"{where}: expected a table, got {value!r}")
        return from_dict(value, type(default), where)
    kind = type(default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ValueError(f"{where}: expected {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def to_dict(cfg: Any) -> dict[str, Any]:
    """The config as plain nested dicts (for manifests and stats). [tracker.slots]
    leaves out the five keys [tracker] sets (`MOTR_KNOBS`): what runs is `TrackerConfig.slot_config()`."""
    d = dataclasses.asdict(cfg)
    slots = d.get("tracker", {}).get("slots") if isinstance(cfg, RunConfig) else None
    for name in MOTR_KNOBS if slots else ():
        del slots[name]
    return d


def to_toml(cfg: RunConfig) -> str:
    """Render a config as TOML that `load_config` reads back to an equal config."""
    top = "".join(f"{k} = {_toml_value(v)}\n" for k, v in to_dict(cfg).items() if not isinstance(v, dict))
    tables = [_toml_table(k, v) for k, v in to_dict(cfg).items() if isinstance(v, dict)]
    return top + "\n" + "\n".join(tables)


def _toml_table(name: str, values: dict[str, Any]) -> str:
    """`[name]` with its scalar keys, then its sub-tables as `[name.sub]`."""
    head = f"[{name}]\n" + "".join(f"{k} = {_toml_value(v)}\n" for k, v in values.items() if not isinstance(v, dict))
    return "\n".join([head, *(_toml_table(f"{name}.{k}", v) for k, v in values.items() if isinstance(v, dict))])


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return repr(v)
