"""Settings declared once: a command's config is a frozen dataclass whose user-facing fields carry their flag and
help (`flag`), and the command line builds its options from those fields (apps/cli.py: `config_options`), each
defaulting to "not given", so a default lives only in its field. `from_flags` turns the command line's values
back into a config. unlearn (guide/config.py), verify (guide/verify.py), export (export/job.py) and serve
(apps/serve.py) are declared this way.
"""
from __future__ import annotations

import dataclasses
from dataclasses import field


def flag(default, help: str, name: str | None = None, parse=None, choices: tuple[str, ...] | None = None,
         is_flag: bool = False, shown: str | None = None):
    """A setting the user gives on the command line: `name` (default --field-name), its help, how the given text
    becomes the value (`parse`), and the default as the help shows it (`shown`)."""
    return field(default=default, metadata={"flag": name, "help": help, "parse": parse, "choices": choices,
                                            "is_flag": is_flag, "shown": shown})


def resolved(default=None, note: str = ""):
    """A setting the job works out (from the generator, the calibration, the number of identities)."""
    return field(default=default, metadata={"resolved": note})


def flags(cls) -> list[dataclasses.Field]:
    """The fields of a config that the command line sets."""
    return [f for f in dataclasses.fields(cls) if "flag" in f.metadata]


def flag_name(f: dataclasses.Field) -> str:
    return f.metadata["flag"] or "--" + f.name.replace("_", "-")


def from_flags(cls, given: dict, **fixed):
    """The command line's values (None or False: not given) => a `cls` with its defaults for the rest; `fixed`:
    values the command works out itself (the device)."""
    kw = {}
    for f in flags(cls):
        value = given.get(f.name)
        if value is None or (f.metadata["is_flag"] and value is False):
            continue
        kw[f.name] = f.metadata["parse"](value) if f.metadata["parse"] else value
    return cls(**{**kw, **fixed})
