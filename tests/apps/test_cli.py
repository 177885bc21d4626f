"""The CLI: exit codes, one-line errors, sample outputs."""
import numpy as np
import pytest
from click.testing import CliRunner

from guide_engine.apps.cli import main


def run(*args):
    return CliRunner().invoke(main, list(args), catch_exceptions=False)


def test_help_lists_commands():
    r = run("--help")
    assert r.exit_code == 0
    for cmd in ("models", "sample"):
        assert cmd in r.output


def test_sample_grid_and_npy(tmp_path, generator):
    r = run("sample", "--seeds", "0-3", "--out", str(tmp_path / "g.png"))
    assert r.exit_code == 0, r.output
    from PIL import Image

    assert Image.open(tmp_path / "g.png").size[0] > 4 * 64
    r = run("sample", "--seeds", "1,3", "--out", str(tmp_path / "x.npy"))
    assert r.exit_code == 0, r.output
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (2, 3, 64, 64) and x.dtype == np.float32 and -1 <= x.min() and x.max() <= 1
    y = np.load(tmp_path / "x.npy")
    np.testing.assert_array_equal(x, y)


@pytest.mark.parametrize("args,msg", [
    (["sample", "--seeds", "3-x", "--out", "a.png"], "--seeds"),
    (["sample", "--seeds", "0-1", "--out", "a.txt"], ".png"),
    (["sample", "--generator", "nope", "--out", "a.png"], "digiface-dcgan64"),
    (["models", "fetch", "nope"], "known models"),
])
def test_bad_input_one_line_error(tmp_path, monkeypatch, args, msg):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2
    assert msg in r.output and "Traceback" not in r.output
    assert not list(tmp_path.iterdir())  # nothing written


def test_default_device_follows_the_environment(monkeypatch):
    """--device wins; else $GUIDE_ENGINE_DEVICE (the suite pins cpu: a CUDA host runs the CPU tests as CI);
    a CUDA device on a host without one is a one-line error."""
    import torch

    from guide_engine.engine.errors import GuideEngineError
    from guide_engine.engine.runtime import default_device

    monkeypatch.setenv("GUIDE_ENGINE_DEVICE", "cpu")
    assert default_device() == "cpu" and default_device("cpu") == "cpu"
    monkeypatch.delenv("GUIDE_ENGINE_DEVICE")
    assert default_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        monkeypatch.setenv("GUIDE_ENGINE_DEVICE", "cuda")
        with pytest.raises(GuideEngineError, match="CUDA is not available"):
            default_device()


@pytest.mark.parametrize("args,msg", [
    (["unlearn", "--seed", "1", "--out", "run", "--iters", "1000000000"], "must be within 1-200,000"),
    (["unlearn", "--seed", "1", "--out", "file/run"], "is a file, not a folder"),
    (["serve", ".", "--port", "70000"], "70000 is not in the range 0<=x<=65535"),
])
def test_careless_input_is_one_line_not_a_traceback(tmp_path, monkeypatch, args, msg):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "file").write_text("not a folder")
    r = CliRunner().invoke(main, args)
    assert r.exit_code == 2 and msg in r.output and "Traceback" not in r.output, r.output
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


def test_resume_of_a_complete_run_says_there_is_nothing_to_resume(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "manifest.json").write_text("{}")  # what a finished run has, and a .partial has not
    r = CliRunner().invoke(main, ["unlearn", "--seed", "1", "--out", "run", "--resume"])
    assert r.exit_code == 2 and "it is complete; nothing to resume" in r.output, r.output
    r = CliRunner().invoke(main, ["unlearn", "--seed", "1", "--out", "other", "--resume"])
    assert r.exit_code == 2 and "no interrupted run at other.partial" in r.output and "complete" not in r.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]


def test_missing_parents_are_made_and_removed_again_when_the_run_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    r = CliRunner().invoke(main, ["unlearn", "--seed", "1", "--out", "a/b/run", "--identity", "nope"])
    assert r.exit_code == 2 and "unknown identity network" in r.output, r.output
    assert not list(tmp_path.iterdir())


def test_out_in_a_folder_that_cannot_be_written_is_refused_before_loading(tmp_path, monkeypatch):
    import os

    real = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p) == str(tmp_path / "ro") else real(p, mode))
    (tmp_path / "ro").mkdir()
    r = CliRunner().invoke(main, ["unlearn", "--seed", "1", "--out", str(tmp_path / "ro" / "run")])
    assert r.exit_code == 2 and "cannot write in" in r.output, r.output


def test_models_fetch_into_an_unwritable_home_is_one_line(tmp_path, monkeypatch):
    (tmp_path / "file").write_text("not a folder")
    monkeypatch.setenv("GUIDE_ENGINE_HOME", str(tmp_path / "file"))
    r = CliRunner().invoke(main, ["models", "fetch", "yunet-2023mar"])
    assert r.exit_code == 2 and "cannot write the weights cache" in r.output, r.output


def test_written_files_follow_the_umask(tmp_path):
    """Runs and exports are read by servers running as other users: 0666 less the umask, not mkstemp's 0600."""
    import os

    import torch
    from safetensors.torch import save_file

    from guide_engine.engine.files import atomic_write, write_json

    old = os.umask(0o022)
    try:
        write_json(tmp_path / "a.json", {"x": 1})
        # save_file makes its file anew, as 0600: the weights of every run were unreadable to other users
        atomic_write(tmp_path / "w.safetensors", lambda tmp: save_file({"w": torch.zeros(2)}, str(tmp)))
        os.umask(0o077)
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "w.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "b.json").stat().st_mode & 0o777 == 0o600


def test_every_command_builds_its_options_from_its_config():
    """unlearn, verify, export and serve declare each setting once, in their config; the CLI's options come from
    those fields, each defaulting to "not given", typed as the field is."""
    import click

    from guide_engine.apps.serve import ServeConfig
    from guide_engine.engine.settings import flag_name, flags, from_flags
    from guide_engine.export.job import ExportConfig
    from guide_engine.guide.config import UnlearnConfig
    from guide_engine.guide.verify import VerifyConfig

    for command, cls in (("unlearn", UnlearnConfig), ("verify", VerifyConfig), ("export", ExportConfig),
                         ("serve", ServeConfig)):
        params = {p.name: p for p in main.commands[command].params}
        for f in flags(cls):
            p = params[f.name]
            assert p.default is None and flag_name(f) in p.opts, (command, f.name)
            if f.default is not None and type(f.default) in (int, float) and not f.metadata["choices"]:
                assert isinstance(p.type, (click.types.IntParamType, click.types.FloatParamType)), (command, f.name)
        assert from_flags(cls, {p: None for p in params}) == cls()  # nothing given: the config's own defaults
    assert from_flags(ServeConfig, {"max_wait_ms": 2.5, "guard": True}) == ServeConfig(max_wait_ms=2.5, guard=True)


def test_the_cli_loads_without_the_serve_extra():
    """FastAPI, pydantic, starlette and uvicorn come with the `serve` extra only: every other command must work
    without them (serve.py and the forget service import them where they serve)."""
    import subprocess
    import sys

    code = ("import sys\n"
            "class Block:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in ('fastapi', 'pydantic', 'starlette', 'uvicorn'):\n"
            "            raise ImportError(name)\n"
            "sys.meta_path.insert(0, Block())\n"
            "from guide_engine.apps.cli import main\n"
            "main(['models', 'list'], standalone_mode=False)\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
