"""The systemd unit, sysusers.d entry and default config file of the `vsdmot-edge` service.

Every hardening option carries a comment in the generated unit saying why it is there, and the
options deliberately left out say why too (PrivateDevices hides the GPU; MemoryDenyWriteExecute
breaks CUDA's JIT). `docs/service.md` repeats the reasons.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from pathlib import Path

from vsdmot import __version__

HIDDEN_DIRS = ("/home", "/root", "/run/user", "/tmp", "/var/tmp")  # invisible or private to the service
_NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
DEFAULT_NAME = "vsdmot-edge"
CONFIG_DIR = "/etc/vsdmot"
HEALTH_PORT = 9108  # the default unit's /healthz and /metrics port; another unit takes the next free one


def default_config_path(name: str) -> str:
    """The config a unit reads: /etc/vsdmot/edge.toml for the default unit, /etc/vsdmot/NAME.toml
    for any other, so a second camera's unit never reads (or `--purge` removes) the first one's."""
    return f"{CONFIG_DIR}/edge.toml" if name == DEFAULT_NAME else f"{CONFIG_DIR}/{name}.toml"


@dataclass(frozen=True)
class UnitConfig:
    name: str = DEFAULT_NAME  # unit name without ".service"; also the journald identifier
    exec_path: str = "/opt/vsdmot/venv/bin/vsdmot-edge"  # absolute path of the venv's console script
    config_path: str = ""  # the run config the service reads (and SIGHUP re-reads); "" = default_config_path(name)
    user: str = "vsdmot"  # dedicated system user the tracker runs as
    groups: tuple[str, ...] = ("video", "render")  # device groups: cameras (video), GPU (render)
    watchdog_s: int = 30  # WatchdogSec: no WATCHDOG=1 (fresh frame) for this long = restart
    start_timeout_s: int = 900  # TimeoutStartSec: covers a first-start TensorRT engine build
    restart_s: int = 5  # RestartSec: pause before a restart (lets a USB camera re-enumerate)
    start_limit_interval_s: int = 600  # StartLimitIntervalSec: window for counting restarts ...
    start_limit_burst: int = 5  # StartLimitBurst: ... more restarts than this in it = give up (failed)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.name.removesuffix(".service"))  # systemctl's spelling works too
        if not re.match(r"^[A-Za-z0-9_.@-]+$", self.name):
            raise ValueError(f"unit name: expected letters, digits, '-', '_', '.', got {self.name!r}")
        if not self.config_path:
            if self.name != DEFAULT_NAME and default_config_path(self.name) == default_config_path(DEFAULT_NAME):
                raise ValueError(f"unit name {self.name!r}: its config would be {default_config_path(self.name)}, "
                                 f"the {DEFAULT_NAME} unit's; pick another name, or pass --config")
            object.__setattr__(self, "config_path", default_config_path(self.name))
        for what in ("exec_path", "config_path"):
            path = getattr(self, what)
            if not path.startswith("/") or any(c.isspace() for c in path):
                raise ValueError(f"unit {what}: expected an absolute path without spaces, got {path!r}")
        for what in ("exec_path", "config_path"):
            hidden = [d for d in HIDDEN_DIRS if (getattr(self, what) + "/").startswith(d + "/")]
            if hidden:
                flag = "--exec" if what == "exec_path" else "--config"
                raise ValueError(f"unit: {flag} {getattr(self, what)} is under {hidden[0]}, which the service cannot "
                                 "see (ProtectHome=yes, PrivateTmp=yes): install the venv under /opt, e.g. "
                                 "/opt/vsdmot/venv (with --root, name the path it has on the device: --exec "
                                 "/opt/vsdmot/venv/bin/vsdmot-edge)")
        for name in (self.user, *self.groups):
            if not _NAME_RE.match(name):
                raise ValueError(f"unit user/group: expected a system name like 'vsdmot', got {name!r}")
        for what in ("watchdog_s", "start_timeout_s", "restart_s", "start_limit_interval_s", "start_limit_burst"):
            if getattr(self, what) <= 0:
                raise ValueError(f"unit {what}: expected > 0, got {getattr(self, what)}")

    @property
    def unit_file(self) -> str:
        return f"{self.name}.service"


# Character-device groups of /proc/devices (systemd matches "char-NAME" with shell globs), so
# devices that appear after start (a camera plugged in later) are allowed too.
DEVICE_RULES = (
    ("char-nvhost*", "Jetson GPU, encoders and host1x channels (/dev/nvhost-*; group nvhost or nvhost-...)"),
    ("char-nvgpu*", "Jetson Orin iGPU nodes (/dev/nvgpu/igpu0/*)"),
    ("char-nvidia*", "discrete GPUs and JetPack 7 OpenRM (/dev/nvidia*, nvidia-uvm)"),
    ("char-drm", "DRM render nodes (/dev/dri/renderD*), used by the render group"),
    ("char-video4linux", "cameras (/dev/video*), USB and CSI through V4L2"),
    ("char-media", "media controller nodes CSI camera pipelines open (/dev/media*)"),
    ("/dev/nvmap", "Jetson GPU/CPU shared memory allocator: a misc device, so allowed by path"),
)

HARDENING = (
    ("NoNewPrivileges=yes", "no setuid escalation from the tracker or anything it spawns"),
    ("ProtectSystem=strict", "the whole file system read-only except the State/Cache dirs below"),
    ("ProtectHome=yes", "no access to /home, /root, /run/user: the tracker needs none"),
    ("PrivateTmp=yes", "a private /tmp, so no temp-file races with other users"),
    ("BindPaths=-/tmp/argus_socket", "CSI cameras: libargus reaches nvargus-daemon through this socket, which the "
     "private /tmp would hide ('-': skipped where there is none)"),
    ("ProtectKernelTunables=yes", "/proc/sys and /sys read-only (reading INA3221 rails still works)"),
    ("ProtectKernelModules=yes", "cannot load kernel modules (JetPack loads nvgpu at boot, not us)"),
    ("ProtectKernelLogs=yes", "no kernel log ring buffer access"),
    ("ProtectControlGroups=yes", "cgroup tree read-only"),
    ("RestrictSUIDSGID=yes", "cannot create setuid/setgid files"),
    ("RestrictRealtime=yes", "no realtime scheduling that could starve the system"),
    ("RestrictNamespaces=yes", "cannot create namespaces"),
    ("LockPersonality=yes", "execution domain locked"),
    ("RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK",
     "unix (sd_notify, jtop socket), IP (RTSP cameras, health server), netlink (udev device discovery)"),
    ("UMask=0027", "files the service writes are not world-readable"),
    ("CapabilityBoundingSet=", "no capabilities at all: cameras and the GPU open through the groups above"),
    ("AmbientCapabilities=", "and none handed to what it runs (ffmpeg for interlaced files)"),
    ("ProtectClock=yes", "cannot set the system or hardware clock"),
    ("ProtectHostname=yes", "cannot change the host name"),
    ("ProtectProc=invisible", "other users' processes are hidden in /proc"),
    ("SystemCallArchitectures=native", "native system calls only (no 32-bit compatibility entry points)"),
    ("LimitCORE=0", "no core file when the watchdog kills a hung tracker (SIGABRT): a CUDA process's core fills "
     "the device's storage; PYTHONFAULTHANDLER (below) puts every thread's Python stack in the journal instead"),
)


def _comment(text: str) -> str:
    return f"# {text}"


def render_unit(cfg: UnitConfig) -> str:
    """The unit file text."""
    return "\n".join(_unit_section(cfg) + _service_section(cfg) + _hardening_section(cfg) + _install_section()) + "\n"


def _unit_section(cfg: UnitConfig) -> list[str]:
    return [
        f"# Generated by `vsdmot-edge service unit` (vsdmot {__version__}). Change settings in",
        f"# {cfg.config_path}, then `systemctl restart {cfg.name}` (`reload` applies [semantics] only);",
        f"# local unit overrides belong in `systemctl edit {cfg.name}`, which survives a re-install.",
        "[Unit]",
        "Description=vsdmot edge multi-object tracker (VSD-MOT)",
        "Documentation=man:systemd.service(5)",
        _comment("RTSP/network cameras need the network up; CSI cameras need nvargus-daemon (Jetson)."),
        _comment("Both are harmless for local cameras and where there is no such daemon."),
        "Wants=network-online.target",
        "After=network-online.target nvargus-daemon.service",
        _comment(f"Give up (unit enters 'failed') after {cfg.start_limit_burst} restarts within "
                 f"{cfg.start_limit_interval_s} s, instead of restarting a broken setup forever."),
        f"StartLimitIntervalSec={cfg.start_limit_interval_s}",
        f"StartLimitBurst={cfg.start_limit_burst}",
        "",
    ]


def _service_section(cfg: UnitConfig) -> list[str]:
    exec_start = shlex.join([cfg.exec_path, "run", "--config", cfg.config_path])
    return [
        "[Service]",
        _comment("The tracker says READY=1 after its first processed frame, and feeds the watchdog"),
        _comment("(WATCHDOG=1) only while fresh frames arrive: a vanished camera means a restart."),
        "Type=notify",
        "NotifyAccess=main",
        f"WatchdogSec={cfg.watchdog_s}",
        _comment("The first start may build TensorRT engines (minutes); later starts use the cache."),
        f"TimeoutStartSec={cfg.start_timeout_s}",
        _comment("SIGTERM: finish the frame, flush outputs, exit 0. SIGKILL only after this."),
        "TimeoutStopSec=30",
        "Restart=on-failure",
        f"RestartSec={cfg.restart_s}",
        f"ExecStart={exec_start}",
        _comment("SIGHUP re-reads the config file without dropping the camera or the model."),
        "ExecReload=/bin/kill -HUP $MAINPID",
        _comment("A dedicated unprivileged user; 'video' opens cameras, 'render' the GPU nodes."),
        f"User={cfg.user}",
        f"Group={cfg.user}",
        f"SupplementaryGroups={' '.join(cfg.groups)}",
        _comment("Writable places under ProtectSystem=strict: state in /var/lib/vsdmot, the"),
        _comment("engine cache in /var/cache/vsdmot/engines (kept across restarts and upgrades)."),
        "StateDirectory=vsdmot",
        "CacheDirectory=vsdmot",
        "WorkingDirectory=/var/lib/vsdmot",
        "Environment=HOME=/var/lib/vsdmot XDG_CACHE_HOME=/var/cache PYTHONUNBUFFERED=1 PYTHONFAULTHANDLER=1",
        _comment("Logs go to journald: journalctl -u " + cfg.name),
        "StandardOutput=journal",
        "StandardError=journal",
        f"SyslogIdentifier={cfg.name}",
        "",
    ]


def _hardening_section(cfg: UnitConfig) -> list[str]:
    out = [
        _comment("Hardening. Not set, on purpose: PrivateDevices=yes (it hides /dev/nvhost-*, /dev/nvmap"),
        _comment("and /dev/video*, so neither the GPU nor a camera would open), MemoryDenyWriteExecute=yes"),
        _comment("(CUDA and TensorRT JIT-compile kernels into writable+executable memory), and"),
        _comment("SystemCallFilter (the NVIDIA user-space drivers use ioctls no preset names)."),
    ]
    for line, why in HARDENING:
        out += [_comment(why), line]
    if cfg.user == UnitConfig.user:  # not for a login user: their other processes' shared memory would go too
        out += [_comment("the dedicated user's System V / POSIX IPC objects go when its last unit stops"),
                "RemoveIPC=yes"]
    out += [_comment("Only the devices the tracker needs; everything else in /dev is refused."), "DevicePolicy=closed"]
    for spec, why in DEVICE_RULES:
        out += [_comment(why), f"DeviceAllow={spec} rw"]
    return out + [""]


def _install_section() -> list[str]:
    return ["[Install]", "WantedBy=multi-user.target"]


def render_sysusers(cfg: UnitConfig) -> str:
    """A sysusers.d(5) entry: the system user, its home, and its device groups."""
    lines = [
        f"# {cfg.user}: runs the {cfg.name} service (created by systemd-sysusers at install/boot)",
        f'u {cfg.user} - "vsdmot edge tracker" /var/lib/vsdmot /usr/sbin/nologin',
    ]
    return "\n".join(lines + [f"m {cfg.user} {g}" for g in cfg.groups]) + "\n"


def default_config_toml(cfg: UnitConfig, health_port: int = HEALTH_PORT) -> str:
    """The starting config (/etc/vsdmot/edge.toml for the default unit). Keys match
    `vsdmot.runtime.config`; all optional. `health_port`: see `free_health_port`."""
    outputs = "tracks" if cfg.name == DEFAULT_NAME else cfg.name
    return f"""\
# {cfg.name} service configuration, read at start: `systemctl restart {cfg.name}` after an edit
# (`systemctl reload {cfg.name}` applies the [semantics] table alone, without a restart).
# Every key is optional; unknown keys are refused. See docs/jetson.md.

[source]
camera = "/dev/video0"        # or csi://0 on a Jetson CSI camera; or set source = "rtsp://..."
# source = "rtsp://192.0.2.10/stream"
# width = 1280
# height = 720
# fps = 30.0

[pipeline]
bundle = ""                   # "" = the shipped default model; or a bundle folder from vsdmot-export
backend = "auto"              # auto = TensorRT with a GPU, else onnxruntime
precision = "auto"            # TensorRT engine precision: auto (int8 for an --int8 bundle, else fp16), fp32, fp16, int8
engine_cache = "/var/cache/vsdmot/engines"

[semantics]
policy = "auto"               # auto skips semantic work on clean frames; always; never

[tracker]
kind = "default"              # the bundle's tracker (hybrid for the shipped model); or e2e, bytetrack
# each tracker's thresholds: [tracker], [tracker.slots], [tracker.bytetrack] in docs/runtime.md

[sinks]
# jsonl_out = "/var/lib/vsdmot/{outputs}.jsonl"   # one path per unit: another unit's is refused
rotate_mb = 100.0             # an output reaching 100 MB is moved aside (NAME.<UTC time>) and a new one begun
keep_files = 5                # earlier files kept per output: at most (5 + 1) x 100 MB each on disk

[service]
health_listen = "127.0.0.1:{health_port}"   # /healthz and /metrics; keep it on localhost unless firewalled
stall_timeout_s = 5.0              # no fresh frame for this long: /healthz 503, watchdog not fed
watchdog = true
preview = false                    # true: /preview (MJPEG) shows the annotated camera frames on the health port
power_meter = "jtop,ina3221,nvml,rapl"   # tried in order for /metrics' watts; "none" = no power metrics
"""


def free_health_port(config_dir: Path, own: Path) -> int:
    """The lowest port from HEALTH_PORT up that no other config in `config_dir` listens on, so each
    camera's unit serves its own /healthz (a taken port leaves a run without one, logged)."""
    from vsdmot.runtime.config import load_config, parse_listen

    taken = set()
    for path in sorted(config_dir.glob("*.toml")):
        if path.resolve() == own.resolve():
            continue
        try:
            listen = load_config(path).service.health_listen
        except (OSError, ValueError):
            continue  # a config that does not load cannot serve: its port is free
        if listen:
            taken.add(parse_listen(listen)[1])
    port = HEALTH_PORT
    while port in taken:
        port += 1
    return port
