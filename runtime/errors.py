"""Project error classes. Bad input or config raises ValueError; these are for the rest."""


class VsdmotError(Exception):
    """Base class for failures that are not bad input: devices, engines, bundles, sources."""


class SourceError(VsdmotError):
    """A frame source could not be opened or read."""


class BundleError(VsdmotError):
    """A model bundle is missing, tampered with, or from an incompatible schema."""


class DeviceError(VsdmotError):
    """A device, driver or engine failed (TensorRT, CUDA, camera hardware)."""
