"""The systemd unit: `systemd-analyze verify` with empty stderr, the options issue 6 asks for (each
with its reason), and `vsdmot-edge service unit|install|uninstall|status` incl. --dry-run / --root."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from vsdmot.edge import service_cmd as C
from vsdmot.edge.cli import main
from vsdmot.edge.unit import UnitConfig, default_config_toml, free_health_port, render_sysusers, render_unit

REAL_EXEC = shutil.which("true") or "/bin/true"


def options(text: str) -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        if line and not line.startswith(("#", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key, []).append(value)
    return out


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze (apt install systemd)")
def test_systemd_analyze_verify_is_silent(tmp_path):
    """The production unit, unchanged except ExecStart pointing at a real executable (verify checks
    that it exists). verify does not resolve User=/SupplementaryGroups= (v252 here), so the unit
    keeps its dedicated user and groups; the user is created by sysusers.d at install."""
    unit = tmp_path / "vsdmot-edge.service"
    unit.write_text(render_unit(UnitConfig(exec_path=REAL_EXEC)))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "", done.stderr


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="needs systemd-analyze")
def test_verify_catches_a_broken_unit(tmp_path):
    """The verify test above can fail: a missing executable and a bad option are reported."""
    unit = tmp_path / "vsdmot-edge.service"
    unit.write_text(render_unit(UnitConfig(exec_path="/nonexistent/vsdmot-edge")).replace("Type=notify", "Type=notifyy"))
    done = subprocess.run(["systemd-analyze", "verify", str(unit)], capture_output=True, text=True)
    assert "notifyy" in done.stderr and "/nonexistent/vsdmot-edge" in done.stderr


def test_unit_has_what_issue_6_asks():
    text = render_unit(UnitConfig(exec_path="/opt/vsdmot/venv/bin/vsdmot-edge"))
    o = options(text)
    expected = {
        "Type": ["notify"], "NotifyAccess": ["main"], "WatchdogSec": ["30"], "Restart": ["on-failure"],
        "StartLimitIntervalSec": ["600"], "StartLimitBurst": ["5"], "User": ["vsdmot"],
        "SupplementaryGroups": ["video render"], "ProtectSystem": ["strict"], "ProtectHome": ["yes"],
        "PrivateTmp": ["yes"], "NoNewPrivileges": ["yes"], "DevicePolicy": ["closed"],
        "ExecStart": ["/opt/vsdmot/venv/bin/vsdmot-edge run --config /etc/vsdmot/edge.toml"],
        "StateDirectory": ["vsdmot"], "CacheDirectory": ["vsdmot"], "StandardOutput": ["journal"],
        "SyslogIdentifier": ["vsdmot-edge"], "ExecReload": ["/bin/kill -HUP $MAINPID"],
    }
    for key, value in expected.items():
        assert o.get(key) == value, key
    allowed = " ".join(o["DeviceAllow"])
    for dev in ("char-nvhost*", "/dev/nvmap", "char-nvgpu*", "char-video4linux", "char-nvidia*", "char-drm"):
        assert dev in allowed
    assert "PrivateDevices" not in o and "MemoryDenyWriteExecute" not in o  # they would hide the GPU / break CUDA JIT
    assert "PrivateDevices=yes (it hides" in text


def test_csi_cameras_reach_nvargus_daemon_through_the_private_tmp():
    """libargus (nvarguscamerasrc, csi://N) talks to nvargus-daemon over the unix socket
    /tmp/argus_socket. PrivateTmp=yes gave the service an empty /tmp, so every CSI open failed
    under systemd ("Connecting to nvargus-daemon failed: No such file or directory") while the
    same command worked in a shell. The socket is bound into the private /tmp ('-': skipped on a
    machine without it), and the service starts after the daemon."""
    o = options(render_unit(UnitConfig()))
    assert o["PrivateTmp"] == ["yes"]
    assert "-/tmp/argus_socket" in " ".join(o.get("BindPaths", []))
    assert "nvargus-daemon.service" in " ".join(o["After"])


def test_every_option_says_why():
    """Each hardening and device line is preceded by a comment."""
    lines = render_unit(UnitConfig()).splitlines()
    start = next(i for i, ln in enumerate(lines) if ln.startswith("NoNewPrivileges"))
    for i in range(start, len(lines)):
        if lines[i] and not lines[i].startswith(("#", "[")) and lines[i - 1]:
            if lines[i].split("=")[0] in ("WantedBy",):
                continue
            assert lines[i - 1].startswith("#"), f"no reason given for {lines[i]}"


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("exec_path", "venv/bin/vsdmot-edge", "absolute path"),
        ("config_path", "/etc/my config.toml", "without spaces"),
        ("user", "Root User", "system name"),
        ("watchdog_s", 0, "watchdog_s"),
        ("name", "vsdmot edge", "unit name"),
        ("exec_path", "/home/me/venv/bin/vsdmot-edge", "under /home, which the service cannot see"),
        ("exec_path", "/tmp/venv/bin/vsdmot-edge", "under /tmp"),
        ("config_path", "/root/edge.toml", "under /root"),
    ],
)
def test_bad_unit_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        UnitConfig(**{field: value})


def test_sysusers_entry():
    assert render_sysusers(UnitConfig()).splitlines()[1:] == [
        'u vsdmot - "vsdmot edge tracker" /var/lib/vsdmot /usr/sbin/nologin', "m vsdmot video", "m vsdmot render"]


def test_default_config_is_a_valid_run_config(tmp_path):
    from vsdmot.runtime.config import load_config

    path = tmp_path / "edge.toml"
    path.write_text(default_config_toml(UnitConfig()))
    cfg = load_config(path)
    assert cfg.source.camera == "/dev/video0" and cfg.service.health_listen == "127.0.0.1:9108"
    assert cfg.pipeline.engine_cache == "/var/cache/vsdmot/engines"  # inside CacheDirectory=, writable


def test_cli_unit_prints_and_writes(tmp_path, capsys):
    assert main(["service", "unit", "--exec", REAL_EXEC]) == 0
    assert "Type=notify" in capsys.readouterr().out
    assert main(["service", "unit", "--exec", REAL_EXEC, "--user", "tracker", "--groups", "video,render,jtop",
                 "--out", str(tmp_path / "u.service")]) == 0
    text = (tmp_path / "u.service").read_text()
    assert "User=tracker" in text and "SupplementaryGroups=video render jtop" in text


def test_install_into_staging_root(tmp_path, capsys):
    root = tmp_path / "stage"
    assert main(["service", "install", "--root", str(root), "--exec", REAL_EXEC]) == 0
    unit = root / "usr/lib/systemd/system/vsdmot-edge.service"
    assert "Type=notify" in unit.read_text()
    assert (root / "usr/lib/sysusers.d/vsdmot-edge.conf").read_text().startswith("# vsdmot")
    config = root / "etc/vsdmot/edge.toml"
    assert config.stat().st_mode & 0o777 == 0o640
    config.write_text("# mine\n")
    assert main(["service", "install", "--root", str(root), "--exec", REAL_EXEC]) == 0
    assert config.read_text() == "# mine\n"  # an existing config is never overwritten
    out = capsys.readouterr().out
    assert "keep:" in out and "chgrp vsdmot /etc/vsdmot/edge.toml" in out  # the packager's step, said
    assert main(["service", "uninstall", "--root", str(root)]) == 0
    assert not unit.exists() and config.exists()  # only --purge removes the config
    assert main(["service", "uninstall", "--root", str(root), "--purge"]) == 0
    assert not config.exists()


def test_one_unit_per_camera_each_with_its_own_config_and_health_port(tmp_path):
    """Before, a second --name read /etc/vsdmot/edge.toml too (the first camera, its outputs, its
    port), and `uninstall --name vsdmot-cam2 --purge` removed the first camera's config."""
    from vsdmot.runtime.config import load_config

    root, names = tmp_path / "stage", ("vsdmot-edge", "vsdmot-cam2", "vsdmot-cam3")
    for name in names:
        assert main(["service", "install", "--root", str(root), "--exec", REAL_EXEC, "--name", name]) == 0
    configs = [root / "etc/vsdmot" / f for f in ("edge.toml", "vsdmot-cam2.toml", "vsdmot-cam3.toml")]
    assert [load_config(c).service.health_listen for c in configs] == ["127.0.0.1:9108", "127.0.0.1:9109", "127.0.0.1:9110"]
    unit = (root / "usr/lib/systemd/system/vsdmot-cam2.service").read_text()
    assert "run --config /etc/vsdmot/vsdmot-cam2.toml" in unit and "SyslogIdentifier=vsdmot-cam2" in unit
    assert "/var/lib/vsdmot/vsdmot-cam2.jsonl" in configs[1].read_text()  # the suggested output is its own
    assert main(["service", "uninstall", "--root", str(root), "--name", "vsdmot-cam2", "--purge"]) == 0
    assert [c.exists() for c in configs] == [True, False, True]
    assert main(["service", "install", "--root", str(root), "--exec", REAL_EXEC, "--name", "vsdmot-cam4"]) == 0
    assert load_config(root / "etc/vsdmot/vsdmot-cam4.toml").service.health_listen == "127.0.0.1:9109"  # freed


def test_a_unit_name_that_would_share_the_default_config_is_refused():
    with pytest.raises(ValueError, match="'edge': its config would be /etc/vsdmot/edge.toml, the vsdmot-edge unit's"):
        UnitConfig(name="edge")
    assert UnitConfig(name="edge", config_path="/etc/vsdmot/front-door.toml").config_path == "/etc/vsdmot/front-door.toml"
    assert UnitConfig(name="vsdmot-cam2.service").unit_file == "vsdmot-cam2.service"  # not .service.service


def test_free_health_port_skips_ports_other_configs_take(tmp_path):
    (tmp_path / "a.toml").write_text('[service]\nhealth_listen = "0.0.0.0:9108"\n')
    (tmp_path / "b.toml").write_text('[service]\nhealth_listen = ""\n')  # off: takes none
    (tmp_path / "c.toml").write_text("not toml [")  # cannot run: takes none
    assert free_health_port(tmp_path, tmp_path / "new.toml") == 9109
    assert free_health_port(tmp_path, tmp_path / "a.toml") == 9108  # its own port is its own
    assert free_health_port(tmp_path / "absent", tmp_path / "absent/x.toml") == 9108


def test_install_dry_run_changes_nothing(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(C.os, "geteuid", lambda: 1000)  # dry-run works unprivileged
    assert main(["service", "install", "--dry-run", "--exec", REAL_EXEC]) == 0
    out = capsys.readouterr().out
    assert "would write: /etc/systemd/system/vsdmot-edge.service" in out
    assert "would run: systemctl enable --now vsdmot-edge.service" in out
    assert "would run: systemd-sysusers /etc/sysusers.d/vsdmot-edge.conf" in out


def test_install_needs_root(monkeypatch, capsys):
    monkeypatch.setattr(C.os, "geteuid", lambda: 1000)
    assert main(["service", "install", "--exec", REAL_EXEC]) == 1
    assert "needs root" in capsys.readouterr().err
    assert main(["service", "uninstall"]) == 1


def test_install_refuses_missing_executable_but_a_package_stages_the_device_path(tmp_path, capsys):
    assert main(["service", "install", "--dry-run", "--exec", "/nonexistent/vsdmot-edge"]) == 2
    assert "no such executable" in capsys.readouterr().err
    # --root stages files for a package built elsewhere: --exec is where the venv will be on the device
    assert main(["service", "install", "--root", str(tmp_path), "--exec", "/opt/vsdmot/venv/bin/vsdmot-edge"]) == 0
    unit = (tmp_path / "usr/lib/systemd/system/vsdmot-edge.service").read_text()
    assert "ExecStart=/opt/vsdmot/venv/bin/vsdmot-edge" in unit


def test_status_without_systemd(capsys):
    if C.systemd_running():
        pytest.skip("systemd is running here")
    assert main(["service", "status"]) == 1
    assert "systemd is not running" in capsys.readouterr().out
    assert main(["service", "status", "--health-url", "http://127.0.0.1:9/healthz"]) == 1  # a run by hand: asked
    assert "health: no answer from http://127.0.0.1:9/healthz" in capsys.readouterr().out
    from vsdmot.edge.health import HealthServer, Metrics
    from vsdmot.runtime.types import Detections, FrameResult

    m = Metrics(stall_s=5.0)
    m.observe(FrameResult(1, 0.0, 1.0, 0.0, "skipped", Detections.empty(True), {"total": 1.0}))
    server = HealthServer(m, "127.0.0.1:0").start()
    try:  # healthy: the exit code says so (a container's health check)
        assert main(["service", "status", "--health-url", f"http://127.0.0.1:{server.address[1]}/healthz"]) == 0
    finally:
        server.close()


def test_default_exec_is_the_venv_script():
    assert C.default_exec_path().endswith("/bin/vsdmot-edge") and Path(C.default_exec_path()).is_file()


@pytest.mark.parametrize(
    "toml, url",
    [(None, "http://127.0.0.1:9108/healthz"), ('[service]\nhealth_listen = "0.0.0.0:9200"\n', "http://127.0.0.1:9200/healthz"),
     ('[service]\nhealth_listen = "192.0.2.7:9108"\n', "http://192.0.2.7:9108/healthz"), ("not toml [", "http://127.0.0.1:9108/healthz"),
     ('[service]\nhealth_listen = ""\n', None)],  # off: status asked 127.0.0.1:9108 and reported 'no answer'
)
def test_status_finds_the_health_url_in_the_config(tmp_path, toml, url):
    path = tmp_path / "edge.toml"
    if toml is not None:
        path.write_text(toml)
    assert C.health_url(str(path)) == url


def test_status_does_not_guess_the_port_of_a_config_it_cannot_read(tmp_path, monkeypatch):
    """The config is 0640 root:vsdmot: without sudo, status asked the default port, another camera's."""
    path = tmp_path / "cam2.toml"
    path.write_text('[service]\nhealth_listen = "127.0.0.1:9109"\n')

    def unreadable(self, *a, **k):
        raise PermissionError(13, "Permission denied", str(self))

    monkeypatch.setattr(Path, "read_text", unreadable)  # as for a user outside group vsdmot (root reads anything)
    assert "not asked" in C.health_line(str(path), None) and "run with sudo" in C.health_line(str(path), None)
    monkeypatch.setattr(C, "_health", lambda url: f"asked {url}")
    assert C.health_line(str(path), "http://127.0.0.1:9109/healthz") == "asked http://127.0.0.1:9109/healthz"


def test_remove_ipc_only_for_the_dedicated_user():
    """RemoveIPC removes every IPC object of the unit's user when its last unit stops: with a login
    user (--user) that would be their other programs' shared memory."""
    from vsdmot.edge.unit import UnitConfig, render_unit

    assert "RemoveIPC=yes" in render_unit(UnitConfig(exec_path="/opt/v/bin/vsdmot-edge"))
    assert "RemoveIPC" not in render_unit(UnitConfig(exec_path="/opt/v/bin/vsdmot-edge", user="robot"))
