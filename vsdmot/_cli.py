"""Shared CLI plumbing: lazy subcommands, logging, and the one place broad errors become one line.

Every console script builds an argparse parser whose subcommands live in their own modules. A
subcommand module exposes `add_arguments(parser)` and `run(args) -> int`, and imports nothing
heavy (never torch) at module level, so that `--help` and the slim runtime stay fast.

Logging: INFO by default (progress and what a run did), `-v` adds vsdmot's DEBUG lines, `-vv`
every library's too, `-q` keeps warnings and errors only. Console scripts with their own parser
declare both through `add_log_arguments`; `run_main` reads `verbose` and `quiet`.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence

from vsdmot import __version__


class Parser(argparse.ArgumentParser):
    """argparse with a one-line error: `vsdmot-edge run: error: argument --rotate: invalid choice: '45'
    (choose from ...) (see vsdmot-edge run --help)` instead of the 16-line usage and then the error."""

    def error(self, message: str):  # noqa: D102 - argparse's hook
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser(prog: str, description: str, commands: Mapping[str, tuple[str, str]]) -> argparse.ArgumentParser:
    """`commands` maps a subcommand name to (module path, one-line help)."""
    parser = Parser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    add_log_arguments(parser, default=0)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")  # subparsers are Parsers too
    for name, (module, help_text) in commands.items():
        mod = importlib.import_module(module)
        first = (mod.__doc__ or help_text).strip().split("\n\n")[0]  # the first paragraph, not its first line
        p = sub.add_parser(name, help=help_text, description=" ".join(first.split()))
        add_log_arguments(p, default=argparse.SUPPRESS)  # `prog CMD -v` works too; SUPPRESS keeps `prog -v CMD`
        mod.add_arguments(p)
        p.set_defaults(_run=mod.run)
    return parser


def add_log_arguments(parser: argparse.ArgumentParser, default: object = 0) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default,
                        help="debug logging from vsdmot (-vv: from every library too)")
    parser.add_argument("-q", "--quiet", action="count", default=default, help="warnings and errors only")


def log_level(verbose: int, quiet: int) -> tuple[int, int]:
    """(root level, vsdmot level): INFO by default; -v debugs vsdmot, -vv everything; -q WARNING."""
    if quiet:
        return logging.WARNING, logging.WARNING
    if verbose:
        return (logging.DEBUG if verbose >= 2 else logging.INFO), logging.DEBUG
    return logging.INFO, logging.INFO


class JournalFormatter(logging.Formatter):
    """Lines prefixed with their syslog priority (`<4>` for a warning), which journald reads off a
    service's stderr: `journalctl -p warning -u cam1` then finds the warnings (sd-daemon(3))."""

    PRIORITY = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4, logging.INFO: 6, logging.DEBUG: 7}

    def format(self, record: logging.LogRecord) -> str:
        prio = next((p for lvl, p in sorted(self.PRIORITY.items(), reverse=True) if record.levelno >= lvl), 7)
        return "\n".join(f"<{prio}>{line}" for line in super().format(record).split("\n"))  # a traceback too


def to_journal() -> bool:
    """Whether stderr is the journal's stream ($JOURNAL_STREAM names its device:inode), as under systemd."""
    import os

    want = os.environ.get("JOURNAL_STREAM", "")
    try:
        st = os.fstat(sys.stderr.fileno())
    except (OSError, ValueError, AttributeError):
        return False
    return bool(want) and want == f"{st.st_dev}:{st.st_ino}"


def setup_logging(verbose: int = 0, quiet: int = 0) -> None:
    """One stderr handler on the root logger, as `logging.basicConfig` (a no-op where logging is set
    up already). For -v the root passes DEBUG and the handler keeps other libraries at INFO: no
    logger's own level is changed, so nothing outlives the call in a process that runs several."""
    root = logging.getLogger()
    if root.handlers:
        return
    lib, ours = log_level(verbose, quiet)
    handler = logging.StreamHandler(sys.stderr)
    form = JournalFormatter if to_journal() else logging.Formatter
    handler.setFormatter(form("%(levelname)s %(name)s: %(message)s"))
    if ours < lib:
        handler.addFilter(lambda r: r.levelno >= lib or r.name == "vsdmot" or r.name.startswith("vsdmot."))
    root.addHandler(handler)
    root.setLevel(min(lib, ours))


def quiet_opencv(verbose: int) -> None:
    """OpenCV's own warnings off unless -v (or $OPENCV_LOG_LEVEL): a stream that cannot open
    printed `[ WARN:0@0.030] global cap.cpp:212 open VIDEOIO(FFMPEG): backend is generally
    available but can't be used to capture by name` above the run's own one-line error. FFmpeg's
    lines (e.g. `Connection refused`) stay: they say why."""
    import os

    if verbose or os.environ.get("OPENCV_LOG_LEVEL"):
        return
    import cv2

    cv2.utils.logging.setLogLevel(cv2.utils.logging.LOG_LEVEL_ERROR)


INSTALL_HINTS = {  # optional top-level package -> how to get it (only these get the one-line hint)
    "torch": "pip install '.[train]' with install.sh's constraints (on a Jetson: NVIDIA's PyTorch for Jetson "
             "wheel); or export on a workstation and copy the bundle folder",
    "onnxruntime": "pip install onnxruntime (on a Jetson: the aarch64 wheel of the Jetson Zoo); or --backend tensorrt",
    "torch_pruning": "pip install '.[train]'", "onnxslim": "pip install '.[train]'", "onnx": "pip install '.[train]'",
    # trackeval declares opencv-python, which would replace the headless OpenCV: install it alone
    "trackeval": "pip install --no-deps trackeval==1.3.0 (as install.sh does)",
    "scipy": "pip install '.[eval]'", "matplotlib": "pip install '.[eval]'",
}


def missing_module_hint(name: str) -> str:
    """One line for a missing optional dependency: which, and how to install it."""
    top = name.split(".")[0]
    return f"this command needs the Python package '{top}', which is not installed: " + INSTALL_HINTS.get(
        top, "see the README's install section")


@contextlib.contextmanager
def handling(signums: Iterable[int], handler: Callable) -> Iterator[bool]:
    """`handler` for these signals during the block, the previous handlers back after it. Python
    sets handlers from the main thread only: elsewhere nothing is installed (yields False)."""
    if threading.current_thread() is not threading.main_thread():
        yield False
        return
    before = {s: signal.signal(s, handler) for s in signums}
    try:
        yield True
    finally:
        for s, previous in before.items():
            signal.signal(s, previous)


@contextlib.contextmanager
def sigterm_exits(message: str) -> Iterator[None]:
    """SIGTERM (kill, a job scheduler) ends the block through SystemExit(143) after printing
    `message`, so cleanups and finally blocks run as on Ctrl-C; the default handler killed the
    process and left half-written folders behind."""
    def stop(signum, frame):
        print(message, file=sys.stderr)
        raise SystemExit(128 + signum)

    with handling((signal.SIGTERM,), stop):
        yield


def say_error(line: str) -> None:
    """The one-line error a command ends with, on stderr; an error to journald (`<3>`) under systemd."""
    print(("<3>" if to_journal() else "") + line, file=sys.stderr)


def run_main(parser: argparse.ArgumentParser, argv: Sequence[str] | None = None) -> int:
    """Parse, set up logging, run. Bad input and device errors become one line and exit 2 / 1."""
    from vsdmot.runtime.errors import VsdmotError

    args = parser.parse_args(argv)
    setup_logging(getattr(args, "verbose", 0), getattr(args, "quiet", 0))
    quiet_opencv(getattr(args, "verbose", 0))
    run = getattr(args, "_run", None) or args.func
    try:
        return int(run(args) or 0)
    except KeyboardInterrupt:
        print(f"{parser.prog}: interrupted", file=sys.stderr)
        return 130
    except ValueError as e:
        say_error(f"{parser.prog}: error: {e}")
        return 2
    except ModuleNotFoundError as e:  # an optional dependency this command needs (a device install has fewer)
        if e.name not in INSTALL_HINTS:  # anything else (a submodule, the kit's own): a broken install or a bug
            raise
        say_error(f"{parser.prog}: error: {missing_module_hint(e.name)}")
        return 1
    except (VsdmotError, OSError) as e:
        say_error(f"{parser.prog}: error: {e}")
        return 1
