"""The package installs and imports as a wheel, and the slim runtime never loads torch."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

from helpers import REPO

# Every module of the slim side must import with torch made unimportable.
BLOCK_TORCH = textwrap.dedent(
    """
    import importlib, pkgutil, sys
    class _Block:
        def find_spec(self, name, path=None, target=None):
            if name == "torch" or name.startswith("torch."):
                raise ImportError("torch is blocked: the slim runtime must not import it")
    sys.meta_path.insert(0, _Block())
    import vsdmot.runtime, vsdmot.edge
    for pkg in (vsdmot.runtime, vsdmot.edge):
        for m in pkgutil.iter_modules(pkg.__path__):
            importlib.import_module(f"{pkg.__name__}.{m.name}")
    assert "torch" not in sys.modules
    print("slim-ok")
    """
)


def test_runtime_and_edge_import_without_torch():
    out = subprocess.run([sys.executable, "-c", BLOCK_TORCH], capture_output=True, text=True, cwd="/")
    assert out.returncode == 0, out.stderr
    assert "slim-ok" in out.stdout


def test_runtime_imports_no_other_vsdmot_package():
    """Dependencies point toward runtime (STYLE.md rule 1): its modules import only each other. The
    torch backend imported models/reference.py from here; the CLI now hands the modules in."""
    import ast

    outside = []
    for path in sorted((REPO / "runtime").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and node.level == 0 else []
            outside += [f"{path.name}: {n}" for n in names if n.startswith("vsdmot.") and not n.startswith("vsdmot.runtime")]
    assert outside == []


@pytest.mark.slow
def test_built_wheel_imports_every_subpackage(tmp_path):
    wheel_dir, target = tmp_path / "dist", tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", wheel_dir, REPO],
        check=True, capture_output=True,
    )
    (wheel,) = wheel_dir.glob("vsdmot-*.whl")
    import zipfile

    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("vsdmot/models/weights/")}
    want = {f"vsdmot/models/weights/{n}" for n in ("detector.pt", "student.pt", "tracker.pt", "quality.json", "NOTICE")}
    assert want <= shipped, f"the wheel lacks the shipped weights (vsdmot-export's default CHECKPOINT): {want - shipped}"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", target, wheel], check=True, capture_output=True)
    code = (
        "import vsdmot, vsdmot.runtime, vsdmot.edge, vsdmot.calibration, vsdmot.export, vsdmot.models, vsdmot.evaluation;"
        f"assert vsdmot.runtime.__file__.startswith({str(target)!r}), vsdmot.runtime.__file__; print('wheel-ok')"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env={"PYTHONPATH": str(target)})
    assert out.returncode == 0, out.stderr
    assert "wheel-ok" in out.stdout


def test_only_optional_packages_get_the_install_hint(capsys):
    """A missing submodule of an installed package (numpy._core, unpickling with an older numpy) is
    not 'numpy is not installed': it is raised in full."""
    import argparse

    import pytest

    from vsdmot._cli import run_main

    def parser_raising(exc):
        p = argparse.ArgumentParser(prog="tool")
        p.set_defaults(func=lambda a: (_ for _ in ()).throw(exc))
        return p

    assert run_main(parser_raising(ModuleNotFoundError("No module named 'torch'", name="torch")), []) == 1
    assert "needs the Python package 'torch'" in capsys.readouterr().err
    assert run_main(parser_raising(ModuleNotFoundError("No module named 'trackeval'", name="trackeval")), []) == 1
    assert "pip install --no-deps trackeval==1.3.0" in capsys.readouterr().err  # vsdmot-eval without it
    for exc in (ModuleNotFoundError("x", name="numpy._core"), ModuleNotFoundError("boom"),
                ModuleNotFoundError("y", name="vsdmot.nothing")):
        with pytest.raises(ModuleNotFoundError):
            run_main(parser_raising(exc), [])


def test_log_lines_carry_their_priority_when_stderr_is_the_journal(tmp_path):
    """Under systemd every line reached journald as one priority: `journalctl -p warning` found none."""
    import os
    import subprocess
    import sys

    code = ("import logging, os, sys; st = os.fstat(2); os.environ['JOURNAL_STREAM'] = f'{st.st_dev}:{st.st_ino}' "
            "if sys.argv[1] == 'journal' else ''; from vsdmot._cli import say_error, setup_logging; setup_logging(); "
            "logging.getLogger('vsdmot.x').warning('w'); logging.getLogger('vsdmot.x').info('i\\nmore'); "
            "say_error('tool: error: e')")
    for mode, want in (("journal", ["<4>WARNING vsdmot.x: w", "<6>INFO vsdmot.x: i", "<6>more", "<3>tool: error: e"]),
                       ("tty", ["WARNING vsdmot.x: w", "INFO vsdmot.x: i", "more", "tool: error: e"])):
        with open(tmp_path / mode, "w") as err:
            subprocess.run([sys.executable, "-c", code, mode], stderr=err, check=True, env={**os.environ})
        assert (tmp_path / mode).read_text().splitlines() == want
