"""guide-engine's ground and runtime: errors, files and the formats the engine writes, protocols, images,
faces, inference backends, sampling; model adapters and the zoo in engine/models/. It imports no other folder
of the package (tests/test_architecture.py)."""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .errors import GuideEngineError

try:
    __version__ = _version("guide-engine")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["GuideEngineError", "__version__"]
