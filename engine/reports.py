"""report.json, verify's verdict: the one module that names it, writes it, reads it and checks it.

A report is bound to the bytes it judged (`judged`: the weights' and the ledger's SHA-256) and its verdict must
follow from its own figures: `verdict` is the rule, here beside the format, so that `verify` (guide/verify.py,
which measures the figures), `sample` (engine/sampling.py) and `serve` (apps/serve.py) apply the same one.
report.png and report.html are drawn from it (guide/report.py).
"""
from __future__ import annotations

from pathlib import Path

from . import integrity
from .errors import IntegrityError
from .files import read_json, write_json

REPORT = "report.json"
REPORT_PNG = "report.png"
REPORT_HTML = "report.html"
MIN_KEPT = 0.95  # the level `forgotten` needs at least this fraction of random faces kept by both networks


def verdict(rows: list[dict], preservation: dict, attacked: bool) -> dict:
    """The two levels over all identities: forgotten (each at w_u, by the judge; others kept) and robust
    (also no attacker's face comes within the judge's p1; None unless every attacker the level needs ran:
    `required_attackers`, guide/attack.py: all_attackers). An identity whose photo the pretrained generator never
    drew (`drawn` False: guide/verify.py), or whose w_u is not them (`found` False), is forgotten by no one: no
    level holds."""
    forgotten = bool(all(r["forgotten"] and r.get("drawn") is not False and r.get("found") is not False for r in rows)
                     and preservation["same_person_frac"] >= MIN_KEPT)
    every = attacked and all(r["attack"].get("required_attackers")
                             and set(r["attack"].get("attackers", {})) >= set(r["attack"]["required_attackers"])
                             for r in rows)
    return {"forgotten": forgotten,  # robust is measured only when every attacker ran
            "robust": bool(forgotten and all(r["attack"]["robust"] for r in rows)) if every else None}


def write(folder: Path, report: dict) -> dict:
    """Sign the report (with GUIDE_ENGINE_SIGNING_KEY set: an HMAC the operator can check) and write it atomically
    as folder/report.json => the signed report."""
    report = integrity.sign(report)
    write_json(Path(folder) / REPORT, report)
    return report


def read(folder: Path) -> dict | None:
    """folder/report.json, or None where there is none."""
    path = Path(folder) / REPORT
    return read_json(path) if path.is_file() else None


def check(report: dict, judged: dict, where: Path) -> None:
    """A report must be about these bytes (`judged`: the weights' and the ledger's SHA-256 just verified), and its
    verdict must follow from its own figures."""
    rec = report.get("judged") or {}
    for key in ("weights_sha256", "ledger_sha256"):
        # an export serves the report of the run it was made from: the artifact's source weights count too
        allowed = {judged.get(key)} | ({judged.get("source_weights_sha256")} if key == "weights_sha256" else set())
        if rec.get(key) not in allowed:
            raise IntegrityError(f"{where}: made for other {'weights' if key.startswith('w') else 'identities'} "
                                 f"({str(rec.get(key))[:16]}... vs {str(judged.get(key))[:16]}... here); "
                                 f"run `guide-engine verify` on this directory")
    try:
        rows = report["identities"]
        levels = verdict(rows, report["preservation"], attacked="attack" in rows[0])
        consistent = levels == report["levels"] and report["passed"] == bool(levels[report["required"]])
    except (KeyError, IndexError, TypeError):
        consistent = False
    if not consistent:
        raise IntegrityError(f"{where}: its verdict (passed: {report.get('passed')}) does not follow from its own "
                             f"figures; the report was edited or is from an older engine (verify again)")


def check_beside(folder: Path, judged: dict | None) -> dict | None:
    """The report beside a run's or an export's weights, checked against them (`judged`) => the report, or None
    where there is none; an edited or moved report is refused (sampling and serving alike)."""
    report = read(folder)
    if report is not None and judged is not None:
        check(report, judged, Path(folder) / REPORT)
    return report
