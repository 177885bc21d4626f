"""What a user at a terminal gets: sample to a directory (resumable, bounded), a run's history.csv and
losses.png, report.html rendered by a real browser."""
import csv
import re
import shutil
import subprocess

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from guide_engine.apps.cli import main
from guide_engine.engine.images import to_uint8


def _cli(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_sample_to_a_directory_resumes_and_matches(generator, tmp_path):
    out = tmp_path / "faces"
    r = _cli("sample", "digiface-dcgan64", "--seeds", "0-9", "--out", f"{out}/")
    assert r.exit_code == 0 and "wrote 10 images" in r.output
    assert sorted(p.name for p in out.iterdir()) == [f"seed{s:06d}.png" for s in range(10)]
    first = (out / "seed000003.png").stat().st_mtime_ns
    r = _cli("sample", "digiface-dcgan64", "--seeds", "0-14", "--out", f"{out}/")  # a stopped job run again
    assert r.exit_code == 0 and "wrote 5 images" in r.output and "10 already there" in r.output
    assert (out / "seed000003.png").stat().st_mtime_ns == first  # not written twice
    assert _cli("sample", "digiface-dcgan64", "--seeds", "3,12", "--out", tmp_path / "x.npy").exit_code == 0
    raw = to_uint8(__import__("torch").from_numpy(np.load(tmp_path / "x.npy")))
    assert np.array_equal(np.asarray(Image.open(out / "seed000003.png")), raw[0])  # an image depends on its seed
    assert np.array_equal(np.asarray(Image.open(out / "seed000012.png")), raw[1])


@pytest.mark.parametrize("name,limit", [("grid.png", 256), ("x.npy", 10000)])
def test_huge_grid_or_array_is_refused_up_front(tmp_path, name, limit):
    r = _cli("sample", "digiface-dcgan64", "--seeds", "0-100000000", "--out", tmp_path / name)
    assert r.exit_code == 2 and f"at most {limit}" in r.output and "--out DIR/" in r.output
    assert not (tmp_path / name).exists()


def test_run_keeps_its_history_and_plots_it(tiny_run_factory):
    run = tiny_run_factory(5)
    with open(run / "history.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [int(r["iteration"]) for r in rows] == [1, 2]
    assert all(float(r["total"]) > 0 and float(r["seconds"]) > 0 for r in rows)
    with Image.open(run / "losses.png") as im:
        assert im.size[0] > 300 and np.asarray(im.convert("L")).std() > 5  # a real plot, not an empty canvas


@pytest.mark.skipif(shutil.which("chromium") is None,
                    reason="Debian's chromium is not installed (CI installs it with apt-get)")
def test_report_html_renders_in_chromium(tiny_run_factory, tmp_path):
    run = tiny_run_factory(7)
    r = _cli("verify", run, "--attack-starts", "1", "--attack-steps", "3", "--n-preserve", "8")
    assert r.exit_code in (0, 1), r.output
    page = run / "report.html"
    text = page.read_text()
    assert text.index("FAILED") < text.index("Figures from both identity networks")  # the verdict in words first
    browser = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    shot = tmp_path / "report.png"
    subprocess.run([*browser, f"--screenshot={shot}", "--window-size=1100,1800", page.as_uri()],
                   check=True, capture_output=True, timeout=120)
    with Image.open(shot) as im:
        pixels = np.asarray(im.convert("L"))
    assert pixels.std() > 20 and (pixels < 128).mean() > 0.01  # text and pictures, not a blank page
    dom = subprocess.run([*browser, "--dump-dom", "--virtual-time-budget=5000", page.as_uri()],
                         check=True, capture_output=True, text=True, timeout=120).stdout
    loaded, total = map(int, re.search(r'data-images-loaded="(\d+)/(\d+)"', dom).groups())
    assert total >= 3 and loaded == total  # report.png, before_after.png, losses.png all decoded


def test_a_killed_run_resumes_from_its_checkpoint_or_starts_afresh(tmp_path):
    """rundir.resume_or_restart, the rule of the forget worker and bench/robust: a checkpoint in OUT.partial/ is
    resumed; a partial directory without one is removed; no partial directory is a fresh start."""
    from guide_engine.engine import rundir

    out = tmp_path / "run"
    assert rundir.resume_or_restart(out) is False and not rundir.partial(out).exists()
    rundir.partial(out).mkdir()
    (rundir.partial(out) / rundir.HISTORY).write_text("iteration\n")
    assert rundir.resume_or_restart(out) is False and not rundir.partial(out).exists()
    rundir.partial(out).mkdir()
    (rundir.partial(out) / rundir.CHECKPOINT).write_bytes(b"state")
    assert rundir.resume_or_restart(out) is True and (rundir.partial(out) / rundir.CHECKPOINT).is_file()
