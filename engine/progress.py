"""Progress bars (tqdm) on stderr: shown only when stderr is a terminal, never under `--quiet`."""
from __future__ import annotations

import sys

_quiet = False


def set_quiet(quiet: bool) -> None:
    global _quiet
    _quiet = quiet


def bar(total=None, desc: str = "", enabled: bool = True, **kwargs):
    """A tqdm bar over `total` (a count, or an iterable to wrap); disabled (a no-op with the same methods)
    when not `enabled`, under --quiet, or when stderr is not a terminal (tqdm's own test, disable=None)."""
    from tqdm import tqdm

    iterable, total = (None, total) if total is None or isinstance(total, int) else (total, None)
    return tqdm(iterable, total=total, desc=desc, file=sys.stderr, disable=True if (_quiet or not enabled) else None,
                dynamic_ncols=True, **kwargs)
