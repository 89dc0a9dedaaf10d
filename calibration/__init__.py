"""Degradation library, calibration clip sets and feeds (numpy/OpenCV), legacy TensorRT calibrator."""

from pathlib import Path


def source_files(*modules: str) -> list[Path]:
    """This package's `<module>.py` files, those that exist: what a cache of degraded frames hashes,
    so frames made by older degradation code are never read back (bench's degraded copies, the
    training detection caches)."""
    here = Path(__file__).parent
    return [here / f"{m}.py" for m in modules if (here / f"{m}.py").is_file()]
