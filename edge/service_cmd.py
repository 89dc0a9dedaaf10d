"""Generate, install or inspect the systemd service: `vsdmot-edge service unit|install|uninstall|status`.

    unit       print the unit file (or --out FILE)
    install    write the unit, a sysusers.d entry for the user and /etc/vsdmot/edge.toml (NAME.toml
               for --name NAME; kept if present), then create the user, reload systemd and enable
               the service. Needs root; --dry-run prints the plan, --root DIR writes into a
               staging root (packaging). One unit per camera: --name vsdmot-cam2.
    uninstall  disable and stop the service, remove the unit and sysusers entry (--purge: config too)
    status     systemctl's view of the service, and its /healthz answer
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from vsdmot._cli import add_log_arguments
from vsdmot.runtime.config import load_config, parse_listen

from .unit import (HEALTH_PORT, HIDDEN_DIRS, UnitConfig, default_config_toml, free_health_port, render_sysusers,
                   render_unit)


@dataclass(frozen=True)
class Action:
    """One step of an install or uninstall plan."""

    kind: str  # "write" | "write-if-absent" | "remove" | "run"
    target: str  # file path, or the command line for "run"
    content: str = ""  # file content for writes
    mode: int = 0o644  # file mode for writes

    def describe(self) -> str:
        verbs = {"write": "write", "write-if-absent": "write (unless it exists)", "remove": "remove", "run": "run"}
        extra = f" ({len(self.content.splitlines())} lines, mode {self.mode:o})" if self.content else ""
        return f"{verbs[self.kind]}: {self.target}{extra}"


CONFIG_HELP = "config file the service reads (default: /etc/vsdmot/edge.toml, or /etc/vsdmot/NAME.toml for --name NAME)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="service_command", required=True, metavar="ACTION")
    for name, help_text in (("unit", "print the systemd unit"), ("install", "install and enable the service"),
                            ("uninstall", "disable and remove the service"), ("status", "show the service's state")):
        p = sub.add_parser(name, help=help_text)
        add_log_arguments(p, default=argparse.SUPPRESS)  # `service status -v`, as `run -v`
        p.add_argument("--name", default="vsdmot-edge", help="unit name (default: vsdmot-edge)")
        if name in ("unit", "install"):
            _unit_options(p)
        if name in ("install", "uninstall"):
            p.add_argument("--dry-run", action="store_true", help="print what would be done; change nothing")
            p.add_argument("--root", metavar="DIR", help="write into this staging root (packaging); runs nothing")
        if name == "install":
            p.add_argument("--no-start", action="store_true", help="enable, but do not start now")
        if name == "uninstall":
            p.add_argument("--purge", action="store_true", help="also remove the unit's config file")
        if name in ("uninstall", "status"):
            p.add_argument("--config", dest="config_path", default="", help=CONFIG_HELP)
        if name == "unit":
            p.add_argument("--out", metavar="FILE", help="write the unit here instead of stdout")
        if name == "status":
            p.add_argument("--health-url", help="the service's /healthz (default: from the config's [service] health_listen)")


def _unit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--exec", dest="exec_path", metavar="PATH", default=None,
                   help="absolute path of vsdmot-edge (default: the one beside this Python)")
    p.add_argument("--config", dest="config_path", default="", help=CONFIG_HELP)
    p.add_argument("--user", default="vsdmot", help="system user the service runs as (default: vsdmot)")
    p.add_argument("--groups", default="video,render",
                   help="supplementary groups, comma-separated (default video,render; add jtop for jtop power)")
    p.add_argument("--watchdog-sec", type=int, default=30, help="WatchdogSec (default: 30)")


def default_exec_path() -> str:
    """vsdmot-edge beside the running interpreter (the venv's bin/), else on PATH."""
    beside = Path(sys.executable).parent / "vsdmot-edge"
    if beside.is_file():
        return str(beside.absolute())
    found = shutil.which("vsdmot-edge")
    if found is None:
        raise ValueError("cannot find the vsdmot-edge executable: pass --exec /path/to/venv/bin/vsdmot-edge")
    return str(Path(found).absolute())


def check_interpreter(exec_path: str) -> None:
    """ValueError when the script's Python resolves under a folder the service cannot see (a venv
    made from pyenv's Python in /root or /home: ExecStart would fail with 203/EXEC under
    ProtectHome=yes); `--exec` itself was checked, not what its first line runs."""
    try:
        first = Path(exec_path).read_bytes()[:256].split(b"\n", 1)[0]
    except OSError:
        return
    if not first.startswith(b"#!"):
        return
    python = Path(first[2:].decode(errors="replace").split()[0]).resolve()
    hidden = [d for d in HIDDEN_DIRS if (str(python) + "/").startswith(d + "/")]
    if hidden:
        raise ValueError(f"--exec {exec_path}: its Python resolves to {python}, under {hidden[0]}, which the service "
                         "cannot see (ProtectHome=yes, PrivateTmp=yes): make the venv from a system Python, e.g. "
                         "/usr/bin/python3 -m venv /opt/vsdmot/venv (install.sh's .venv is for development)")


def unit_config(args: argparse.Namespace) -> UnitConfig:
    return UnitConfig(name=args.name, exec_path=args.exec_path or default_exec_path(),
                      config_path=args.config_path, user=args.user, watchdog_s=args.watchdog_sec,
                      groups=tuple(g for g in args.groups.split(",") if g))


def install_plan(cfg: UnitConfig, root: str | None) -> list[Action]:
    """Files to write and commands to run. A staging root gets the vendor layout (/usr/lib) and
    no commands; the live system gets /etc and the commands."""
    base = Path(root or "/")
    unit_dir, sysusers_dir = ("usr/lib/systemd/system", "usr/lib/sysusers.d") if root else ("etc/systemd/system", "etc/sysusers.d")
    sysusers = base / sysusers_dir / f"{cfg.name}.conf"
    config = base / cfg.config_path.lstrip("/")
    plan = [
        Action("write", str(base / unit_dir / cfg.unit_file), render_unit(cfg)),
        Action("write", str(sysusers), render_sysusers(cfg)),
        Action("write-if-absent", str(config), default_config_toml(cfg, free_health_port(config.parent, config)), 0o640),
    ]
    if root:
        return plan
    return plan + [
        Action("run", f"systemd-sysusers {sysusers}"),
        Action("run", f"chgrp {cfg.user} {cfg.config_path}"),
        Action("run", "systemctl daemon-reload"),
    ]


def uninstall_plan(cfg: UnitConfig, root: str | None, purge: bool) -> list[Action]:
    base = Path(root or "/")
    dirs = ("usr/lib/systemd/system", "usr/lib/sysusers.d") if root else ("etc/systemd/system", "etc/sysusers.d")
    plan = [] if root else [Action("run", f"systemctl disable --now {cfg.unit_file}")]
    plan += [Action("remove", str(base / dirs[0] / cfg.unit_file)), Action("remove", str(base / dirs[1] / f"{cfg.name}.conf"))]
    if purge:
        plan.append(Action("remove", str(base / cfg.config_path.lstrip("/"))))
    return plan + ([] if root else [Action("run", "systemctl daemon-reload")])


def apply(plan: list[Action], dry_run: bool) -> None:
    """Carry out (or, dry, print) each step; a failing command raises OSError naming it."""
    for action in plan:
        path = Path(action.target)
        if action.kind == "write-if-absent" and path.exists():
            print(f"keep: {path} (exists; not overwritten)")
            continue
        print(("would " if dry_run else "") + action.describe())
        if dry_run:
            continue
        if action.kind.startswith("write"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(action.content)
            path.chmod(action.mode)
        elif action.kind == "remove":
            path.unlink(missing_ok=True)
        else:
            _run(action.target.split())


def _run(argv: list[str]) -> None:
    done = subprocess.run(argv, capture_output=True, text=True)
    if done.returncode != 0:
        raise OSError(f"`{' '.join(argv)}` failed ({done.returncode}): {(done.stderr or done.stdout).strip()}")


def _need_root(args: argparse.Namespace, what: str) -> None:
    if not args.dry_run and not args.root and os.geteuid() != 0:
        raise PermissionError(f"service {what}: needs root (run it with sudo), or pass --dry-run to see the "
                              "plan, or --root DIR to write into a staging root")


def systemd_running() -> bool:
    """True when systemd is PID 1 here (sd_booted's test)."""
    return Path("/run/systemd/system").is_dir()


def run(args: argparse.Namespace) -> int:
    action = args.service_command
    if action == "unit":
        text = render_unit(unit_config(args))
        if args.out:
            Path(args.out).write_text(text)
            print(f"wrote {args.out}")
        else:
            sys.stdout.write(text)
        return 0
    if action == "status":
        return _status(args)
    _need_root(args, action)
    if action == "install":
        return _install(args)
    cfg = UnitConfig(name=args.name, config_path=args.config_path)
    apply(uninstall_plan(cfg, args.root, args.purge), args.dry_run)
    return 0


def _install(args: argparse.Namespace) -> int:
    cfg = unit_config(args)
    if not args.root and not Path(cfg.exec_path).is_file():  # --root stages a package: --exec is the target's path
        raise ValueError(f"--exec {cfg.exec_path}: no such executable (install vsdmot into a venv first)")
    if not args.root:
        check_interpreter(cfg.exec_path)
    live = not args.root and not args.dry_run
    if live and not systemd_running():
        raise OSError("systemd is not running on this machine: use --root DIR to stage the files for a package")
    plan = install_plan(cfg, args.root)
    if not args.root:
        plan.append(Action("run", f"systemctl enable {'' if args.no_start else '--now '}{cfg.unit_file}"))
    apply(plan, args.dry_run)
    if args.root:
        print(f"note: {cfg.config_path} is staged mode 0640, owned by whoever ran this: the package must give it "
              f"group {cfg.user} once the user exists (postinst: systemd-sysusers, then chgrp {cfg.user} "
              f"{cfg.config_path}), or the service cannot read it")
    else:
        print(f"next: edit {cfg.config_path}, then `systemctl restart {cfg.name}` (`systemctl reload` applies "
              f"[semantics] only); logs: journalctl -u {cfg.name} -f")
    return 0


def _status(args: argparse.Namespace) -> int:
    """0 when active, 3 when not (like systemctl), 1 when systemd is not running here (without it,
    with --health-url: 0 when the run's /healthz answers 200, else 1)."""
    if not systemd_running():
        print("systemd is not running on this machine (no /run/systemd/system): there is no service to inspect. "
              "On the device: systemctl status " + args.name)
        if args.health_url:  # a run started by hand (or in a container) still answers: its health decides
            line = health_line("", args.health_url)
            print(f"health: {line}")
            return 0 if line.startswith("200 ") else 1
        return 1
    props = "ActiveState,SubState,Result,MainPID,NRestarts,StatusText,ExecMainStartTimestamp"
    done = subprocess.run(["systemctl", "show", "-p", props, f"{args.name}.service"], capture_output=True, text=True)
    print(done.stdout.strip() or done.stderr.strip())
    active = "ActiveState=active" in done.stdout
    config = UnitConfig(name=args.name, config_path=args.config_path).config_path
    print(f"health: {health_line(config, args.health_url)}")
    return 0 if active else 3


def health_line(config: str, given_url: str | None) -> str:
    """What the unit's /healthz says, or why it was not asked: the config (0640, group vsdmot) names
    its port, and guessing the default port asked another camera's unit without sudo."""
    try:
        url = given_url or health_url(config)
    except PermissionError:
        return f"not asked: {config} is not readable by this user and names the port; run with sudo, or --health-url URL"
    return _health(url) if url else f"off ([service] health_listen is empty in {config})"


def health_url(config_path: str) -> str | None:
    """http://HOST:PORT/healthz from the config's [service] health_listen (the default port without a
    config file); None when the config turns the server off (health_listen = ""). PermissionError
    when this user cannot read it."""
    listen = f"127.0.0.1:{HEALTH_PORT}"
    try:
        listen = load_config(config_path).service.health_listen
    except ValueError:  # no such file (a unit without a config: the default port), or a config that does not load
        pass  # an unreadable one (PermissionError) propagates: its port is not the default's to guess
    if not listen:
        return None
    host, port = parse_listen(listen)
    host = "127.0.0.1" if host == "0.0.0.0" else ("[::1]" if host == "::" else f"[{host}]" if ":" in host else host)
    return f"http://{host}:{port}/healthz"


def _health(url: str) -> str:
    try:
        with urllib.request.urlopen(url, timeout=2) as r:  # noqa: S310 - a local URL the user gives
            return f"{r.status} {json.loads(r.read())}"
    except urllib.error.HTTPError as e:
        return f"{e.code} {e.read().decode(errors='replace').strip()}"
    except (OSError, ValueError) as e:
        return f"no answer from {url} ({e})"
