"""Where the shared real data and the YOLOX-nano file live, resolved in one place.

The clips and the peer detector are read in place, never copied into the repository. They are
found at, in order:
- `$VSDMOT_DATA` (the clips' root, holding PETS09-S2L1/, TUD-Campus/, MOT17-mini/);
- `$VSDMOT_SHARED/data` and `$VSDMOT_SHARED/models` (a whole shared folder elsewhere);
- `../shared` beside the repository (the layout CI and the README assume).
Stdlib only: every package, `runtime` included, may import it.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]  # vsdmot/paths.py -> the repository root


def shared_root() -> Path:
    """The shared folder: $VSDMOT_SHARED, else ../shared beside the repository."""
    return Path(os.environ.get("VSDMOT_SHARED") or REPO.parent / "shared")


def data_root() -> Path:
    """The real clips' root: $VSDMOT_DATA, else <shared>/data."""
    return Path(os.environ.get("VSDMOT_DATA") or shared_root() / "data")


def yolox_nano_onnx() -> Path:
    """The official YOLOX-nano ONNX (Apache-2.0), the peer's detector and the converter's source."""
    return shared_root() / "models" / "yolox_nano.onnx"
