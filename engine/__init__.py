"""guide-engine runtime: protocols, inference backends, sampling, images, serving, errors, the CLI;
model adapters and the zoo in engine/models/."""
from importlib.metadata import PackageNotFoundError
from importlib.metadata import version as _version

from .errors import GuideEngineError

try:
    __version__ = _version("guide-engine")
except PackageNotFoundError:  # running from a source tree that was not installed
    __version__ = "0.0.0+unknown"

__all__ = ["GuideEngineError", "__version__"]
