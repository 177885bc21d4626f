"""Crash safety, proven with real processes and SIGKILL (no chance to clean up): an unlearn run killed after
its first checkpoint and resumed ends with weights bit-identical to an uninterrupted run; a kill during
export or verify leaves no half-written artifact where the finished one would be."""
import csv
import json
import os
import signal
import subprocess
import sys
import time

import pytest

CLI = [sys.executable, "-m", "guide_engine.apps.cli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same thread count in every process: the same float sums


def _run(*args, timeout=600):
    r = subprocess.run([*CLI, *map(str, args)], env=ENV, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, r.stderr[-2000:]
    return r


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 600) -> None:
    deadline = time.time() + timeout
    while not ready():
        assert proc.poll() is None, f"finished before it could be killed: {proc.stderr.read()[-2000:]}"
        assert time.time() < deadline, "never reached the point to kill at"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def _spawn(*args):
    return subprocess.Popen([*CLI, *map(str, args)], env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True)


@pytest.mark.slow
def test_sigkill_then_resume_is_bit_identical(generator, tmp_path):
    args = ["--seed", "3", "--iters", "60", "--checkpoint-every", "20", "--invert-steps", "20", "--quiet"]
    _run("unlearn", *args, "--out", tmp_path / "whole")
    killed = tmp_path / "killed"
    checkpoint = tmp_path / "killed.partial" / "checkpoint.pt"
    proc = _spawn("unlearn", *args, "--out", killed)
    _kill_when(proc, checkpoint.is_file)
    assert proc.returncode == -signal.SIGKILL and not killed.exists()  # nothing where the finished run would be
    _run("unlearn", *args, "--out", killed, "--resume")
    whole = tmp_path / "whole" / "generator.safetensors"
    assert (killed / "generator.safetensors").read_bytes() == whole.read_bytes()
    with open(killed / "history.csv", newline="") as f:  # each iteration once: the rows after the checkpoint redone
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 61))
    # the manifest's unlearning time covers every iteration, those before the kill included
    timings = json.loads((killed / "manifest.json").read_text())["timings_s"]
    assert timings["unlearn"] >= sum(float(r["seconds"]) for r in rows)
    assert timings["per_iter"] == pytest.approx(timings["unlearn"] / 60, rel=1e-3)


@pytest.fixture(scope="module")
def small_run(tiny_run_factory):
    return tiny_run_factory(9)


@pytest.mark.slow
def test_sigkill_during_export_leaves_no_artifact(small_run, tmp_path):
    out = tmp_path / "export"
    partial = tmp_path / "export.partial"
    proc = _spawn("export", small_run, "--onnx", "--out", out, "--quiet")
    _kill_when(proc, lambda: partial.is_dir() and any(partial.iterdir()))
    assert not out.exists()  # only the .partial/ directory, which the next export replaces
    _run("export", small_run, "--onnx", "--out", out, "--quiet")
    assert (out / "export.json").is_file() and not partial.exists()


@pytest.mark.slow
def test_sigkill_during_verify_leaves_no_report(small_run):
    for name in ("report.json", "report.png", "report.html"):
        (small_run / name).unlink(missing_ok=True)
    proc = _spawn("verify", small_run, "--attack-starts", "1", "--attack-steps", "400", "--n-preserve", "8", "--quiet")
    time.sleep(8)  # models loaded, calibrating or attacking
    assert proc.poll() is None, proc.stderr.read()[-2000:]
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not any((small_run / n).exists() for n in ("report.json", "report.png", "report.html"))


@pytest.mark.slow
def test_resume_with_other_flags_is_refused(tmp_path):
    """A resumed run must be the run it resumes: before, `--resume --lr 0.01` exited 0 with config.json saying
    0.01 while Adam kept 1e-4, and `--resume --target average --losses local` trained half a run with each."""
    args = ["--seed", "3", "--iters", "60", "--checkpoint-every", "20", "--quiet"]
    out = tmp_path / "run"
    proc = _spawn("unlearn", *args, "--out", out)
    _kill_when(proc, (tmp_path / "run.partial" / "checkpoint.pt").is_file)
    config = (tmp_path / "run.partial" / "config.json").read_bytes()
    for extra, flag in ((["--lr", "0.01"], "--lr differs"),
                        (["--target", "average", "--losses", "local"], "--losses, --target, --target-search differ"),
                        (["--iters", "80"], "--iters differs")):
        r = subprocess.run([*CLI, "unlearn", *args, *extra, "--out", str(out), "--resume"], env=ENV,
                           capture_output=True, text=True, timeout=600)
        assert r.returncode == 2 and flag in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert (tmp_path / "run.partial" / "config.json").read_bytes() == config and not out.exists()


@pytest.mark.slow
def test_a_second_unlearn_into_the_same_out_is_refused(tmp_path):
    """Before: both ran, one ended in a traceback, the finished run's history.csv held both runs' rows and a
    43 MB checkpoint temp file was left in it."""
    out = tmp_path / "C"
    first = _spawn("unlearn", "--seed", "6", "--iters", "40", "--quiet", "--out", out)
    deadline = time.time() + 300
    while not (tmp_path / "C.partial").is_dir():
        assert first.poll() is None and time.time() < deadline, first.stderr.read()[-2000:]
        time.sleep(0.02)
    second = subprocess.run([*CLI, "unlearn", "--seed", "7", "--iters", "40", "--quiet", "--out", str(out)], env=ENV,
                            capture_output=True, text=True, timeout=600)
    assert second.returncode == 2 and "another `unlearn` is writing it" in second.stderr, second.stderr
    assert first.wait(timeout=600) == 0, first.stderr.read()[-2000:]
    with open(out / "history.csv", newline="") as f:
        assert [int(r["iteration"]) for r in csv.DictReader(f)] == list(range(1, 41))
    assert not [p.name for p in out.iterdir() if p.name.endswith(".tmp")]
    assert "seed:6" in (out / "identities.json").read_text() and "seed:7" not in (out / "identities.json").read_text()
