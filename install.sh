#!/usr/bin/env bash
# Set up .venv/ with the kit and everything its tests and commands need. Idempotent: a second
# run with unchanged pyproject.toml / constraints.txt / install.sh does nothing.
#
#   ./install.sh            install (train + eval + dev extras)
#   ./install.sh --runtime  the slim runtime only (numpy, OpenCV, onnxruntime): what a device needs
#
# On a Jetson (/etc/nv_tegra_release exists) JetPack already provides torch, TensorRT, OpenCV
# (with GStreamer) and pycuda. The venv is then made with --system-site-packages so those are
# used, torch is NOT pinned (constraints.txt is for x86 CPU machines only), and the `jetson`
# extra adds jetson-stats. Nothing here downloads CUDA wheels.
set -euo pipefail
cd "$(dirname "$0")"

PY=${PYTHON:-python3}
EXTRAS="train,eval,dev"
[ "${1:-}" = "--runtime" ] && EXTRAS=""
JETSON=0
[ -f /etc/nv_tegra_release ] && JETSON=1

say() { printf '[install] %s\n' "$*" >&2; }

# Debian's ffmpeg: the H.264 codec degradation and the live-stream tests use it.
if ! command -v ffmpeg >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing Debian's ffmpeg (codec degradation, stream tests)"
    (apt-get install -y -qq ffmpeg >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq ffmpeg; }) >/dev/null 2>&1 \
      || say "WARNING: could not install ffmpeg; the h264 degradation and stream tests will skip"
  else
    say "WARNING: ffmpeg not found (apt-get install ffmpeg); the h264 degradation and stream tests will skip"
  fi
fi

if [ ! -x .venv/bin/python ]; then
  if [ $JETSON = 1 ]; then
    say "Jetson detected: venv with --system-site-packages (JetPack's TensorRT and OpenCV, a system torch if any)"
    "$PY" -m venv --system-site-packages .venv
  else
    "$PY" -m venv .venv
  fi
fi

stamp=$(cat pyproject.toml constraints.txt install.sh | sha256sum | cut -c1-16)-$EXTRAS-$JETSON
if [ "$(cat .venv/.vsdmot-stamp 2>/dev/null)" = "$stamp" ]; then
  say "up to date (.venv)"
  exit 0
fi

PIP=(.venv/bin/python -m pip install --disable-pip-version-check -q)
spec="."
[ -n "$EXTRAS" ] && spec=".[$EXTRAS]"
if [ $JETSON = 1 ]; then
  say "installing vsdmot[$EXTRAS,jetson] against the system's packages (no torch pin)"
  "${PIP[@]}" -e ".[${EXTRAS:+$EXTRAS,}jetson]"
else
  say "installing vsdmot${EXTRAS:+[$EXTRAS]} (torch pinned by constraints.txt)"
  "${PIP[@]}" -c constraints.txt -e "$spec"
fi
if [ -n "$EXTRAS" ]; then
  # Both declare opencv-python, which would overwrite the headless build: install without deps
  # (their real needs, numpy and scipy, are already here).
  "${PIP[@]}" --no-deps trackeval==1.3.0 deep-sort-realtime==1.3.2
fi
echo "$stamp" > .venv/.vsdmot-stamp
say "done: .venv/bin/vsdmot-edge --help"
