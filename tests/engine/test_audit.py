"""engine/audit.py: the hash chain of audit.jsonl, every kind of tampering named by its first line, a torn last
line (a crash mid-write) cut off by the next append, and the file private."""
import json
import os
import stat

import pytest

from guide_engine.engine import audit
from guide_engine.engine.errors import GuideEngineError


@pytest.fixture
def trail(tmp_path):
    path = tmp_path / audit.AUDIT
    for i in range(5):
        audit.append(path, {"request": f"r{i}", "event": "state", "state": "queued"})
    return path


def test_an_intact_chain(trail):
    assert audit.check(trail) == (5, None, "intact")
    lines = trail.read_text().splitlines()
    assert [json.loads(line)["seq"] for line in lines] == [1, 2, 3, 4, 5]
    assert json.loads(lines[0])["prev"] == audit.GENESIS
    assert audit.head(trail) == __import__("hashlib").sha256(lines[-1].encode()).hexdigest()
    assert stat.S_IMODE(os.stat(trail).st_mode) == 0o600


@pytest.mark.parametrize("tamper, bad, what", [
    (lambda ls: ls.__setitem__(2, ls[2].replace('"queued"', '"deployed"')), 3, "edited"),
    (lambda ls: ls.pop(1), 2, "seq"),
    (lambda ls: ls.insert(3, ls.pop(2)), 3, "seq"),
    (lambda ls: ls.__setitem__(4, "{not json"), 5, "not a JSON line"),
])
def test_tampering_is_named_at_its_first_line(trail, tamper, bad, what):
    lines = trail.read_text().splitlines()
    tamper(lines)
    trail.write_text("\n".join(lines) + "\n")
    n, first, why = audit.check(trail)
    assert first == bad and what in why


def test_a_line_rewritten_with_its_own_hash_recomputed_breaks_the_next(trail):
    lines = trail.read_text().splitlines()
    record = json.loads(lines[1])
    record["state"] = "deployed"
    record["sha256"] = audit._digest(record)
    lines[1] = json.dumps(record, sort_keys=True, separators=(",", ":"))
    trail.write_text("\n".join(lines) + "\n")
    assert audit.check(trail)[1] == 3


def test_a_torn_last_line_is_cut_off_by_the_next_append(trail):
    with open(trail, "ab") as f:
        f.write(b'{"seq": 6, "half')  # a crash mid-write: never acknowledged
    assert audit.check(trail)[1] == 6
    record = audit.append(trail, {"request": "r6", "event": "state", "state": "running"})
    assert record["seq"] == 6 and audit.check(trail) == (6, None, "intact")


def test_no_trail_is_an_error(tmp_path):
    with pytest.raises(GuideEngineError, match="no audit trail"):
        audit.check(tmp_path / "missing.jsonl")
