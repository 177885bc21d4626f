"""One exception family. The CLI prints its message on one line and exits non-zero;
the server maps it to a 4xx with the same text."""


class GuideEngineError(Exception):
    """A user-facing error: the message names what was wrong and how to fix it."""

    exit_code = 2


class IntegrityError(GuideEngineError):
    """A file or report is not what its record says (engine/integrity.py): never passed over."""


class CheckFailed(GuideEngineError):
    """A check ran and its result was negative (verification, parity): exit code 1."""

    exit_code = 1


def first_line(e: BaseException) -> str:
    """A library exception as one line for a GuideEngineError message (its first line, or its type)."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
