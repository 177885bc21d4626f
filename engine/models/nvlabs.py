"""Bring-your-own NVlabs generators: StyleGAN2 / StyleGAN3 and EG3D pickles.

    guide-engine unlearn --generator nvlabs:ffhqrebalanced512-128.pkl --nvlabs-code ~/eg3d/eg3d --trust-pickle ...

An NVlabs pickle holds whole modules (`G_ema` and friends) and needs NVlabs' own code (`dnnlib`,
`torch_utils`, `training`) importable to load. The user points at their checkout with --nvlabs-code;
nothing of that code is copied into the engine. Unpickling runs code, so the engine refuses to load a
pickle unless the user says --trust-pickle.

Adapters (`protocols.Generator`), chosen by what the module has:
- EG3D (`backbone`, `rendering_kwargs`): latents in W+ (num_ws, w_dim), mapped with the conditioning
  camera; images rendered from a camera (`view`), the front view unless the loop samples one per
  iteration (yaw ~ U(+-pi/12), pitch offset -0.2, FOV 18.837 deg, radius 2.7, as GUIDE-SPEC says);
  the MSE term compares tri-planes; only `backbone.synthesis` is trained; the pickle's neural
  rendering resolution is kept.
- StyleGAN2/3 (`mapping`, `synthesis`): W+ latents, no camera, the synthesis network is trained.
Noise is `noise_mode="const"` everywhere, so runs are reproducible (the official code uses random noise).
"""
from __future__ import annotations

import copy
import math
import pickle
import sys
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from ..crops import FFHQ
from ..errors import GuideEngineError

PREFIX = "nvlabs:"
FOV_DEG = 18.837
YAW_RANGE = math.pi / 12
PITCH_OFFSET = -0.2

_ACCESS = {"trust_pickle": False, "nvlabs_code": None}  # the user's decisions, set by the CLI (configure)


def configure(**decisions) -> None:
    """The user's decisions: trust_pickle (may pickles be loaded: they run code), nvlabs_code (where
    NVlabs' code lives). The CLI calls this for every command that loads a generator."""
    unknown = set(decisions) - set(_ACCESS)
    if unknown:
        raise TypeError(f"configure: unknown decision(s) {sorted(unknown)}")
    _ACCESS.update(decisions)


def register_built_extensions() -> None:
    """NVlabs' torch_utils/custom_ops.py builds its CUDA ops (bias_act, upfirdn2d, filtered_lrelu) with
    torch.utils.cpp_extension.load and then imports them by name; the torch versions we support return the
    module without registering it in sys.modules, so that import fails ("No module named 'bias_act_plugin'").
    Wrapped once: load() also registers what it built under its name. Nothing else changes."""
    from torch.utils import cpp_extension

    if getattr(cpp_extension.load, "_guide_engine_registers", False):
        return
    original = cpp_extension.load

    def load(name, *args, **kwargs):
        module = original(name, *args, **kwargs)
        if not isinstance(module, str):  # a Python module (not a bare library path)
            sys.modules.setdefault(name, module)
        return module

    load._guide_engine_registers = True
    cpp_extension.load = load


def load_pickle(path: str | Path) -> tuple[dict, nn.Module]:
    """=> (the pickle's dict, its G_ema). One-line errors for every way this goes wrong."""
    path = Path(path)
    if not path.is_file():
        raise GuideEngineError(f"{path}: no such file")
    if not _ACCESS["trust_pickle"]:
        raise GuideEngineError(f"refusing to load {path}: unpickling runs code from the file; "
                               "pass --trust-pickle if you trust where it came from")
    code = _ACCESS["nvlabs_code"]
    if code is None:
        raise GuideEngineError(f"{path} needs NVlabs' code to load: pass --nvlabs-code DIR "
                               "(the folder holding dnnlib/, torch_utils/, training/)")
    if not Path(code).is_dir():
        raise GuideEngineError(f"--nvlabs-code {code}: no such directory")
    code = str(Path(code).resolve())
    if code not in sys.path:
        sys.path.insert(0, code)
    register_built_extensions()
    try:
        with open(path, "rb") as f:
            data = pickle.load(f)
    except ModuleNotFoundError as e:
        raise GuideEngineError(f"{path} needs module {e.name!r}, which is not under --nvlabs-code {code}") from None
    except Exception as e:  # truncated, not a pickle, ...
        raise GuideEngineError(f"{path}: not a readable NVlabs pickle ({type(e).__name__}: {e})") from None
    G = data.get("G_ema") if isinstance(data, dict) else data
    if not isinstance(G, nn.Module):
        raise GuideEngineError(f"{path}: holds no generator module (expected a dict with 'G_ema')")
    return data if isinstance(data, dict) else {"G_ema": G}, G


def load_generator(name: str) -> "NVlabsGenerator":
    """`nvlabs:PATH.pkl` => the adapter for its G_ema (EG3D or StyleGAN), on the CPU."""
    _, G = load_pickle(name[len(PREFIX):])
    G = G.float().eval().requires_grad_(False)
    if hasattr(G, "backbone") and hasattr(G, "rendering_kwargs"):
        return EG3DGenerator(G, name)
    if hasattr(G, "mapping") and hasattr(G, "synthesis"):
        return StyleGANGenerator(G, name)
    raise GuideEngineError(f"{name}: G_ema has neither EG3D's backbone/rendering_kwargs nor StyleGAN's "
                           "mapping/synthesis")


def save_pickle(adapter: "NVlabsGenerator", path: Path) -> None:
    """The unlearned generator in the user's own format: their original pickle's dict (so NVlabs'
    `legacy.load_network_pkl`, which wants G, D and G_ema, still loads it) with G_ema *and* G replaced by
    the unlearned module; G is the raw training generator and still knows the identity. Other entries
    (D, augment_pipe, training_set_kwargs) are kept. Written to a temp name and renamed."""
    from ..files import atomic_write

    data, _ = load_pickle(adapter.name[len(PREFIX):])
    G = copy.deepcopy(adapter.G).eval().requires_grad_(False).cpu()
    data = {**data, "G_ema": G, **({"G": G} if "G" in data else {})}

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            pickle.dump(data, f)

    atomic_write(path, write)


# -- cameras (EG3D's conventions: camera_utils.LookAtPoseSampler and FOV_to_intrinsics) ---------------

def look_at_pose(yaw: float, pitch: float, pivot: torch.Tensor, radius: float) -> torch.Tensor:
    """Azimuth `yaw` and polar angle `pitch` (radians; pi/2, pi/2 = frontal) => (1, 4, 4) cam2world."""
    v = min(max(pitch, 1e-5), math.pi - 1e-5) / math.pi
    phi, theta = math.acos(1 - 2 * v), yaw
    origin = torch.tensor([[radius * math.sin(phi) * math.cos(math.pi - theta), radius * math.cos(phi),
                            radius * math.sin(phi) * math.sin(math.pi - theta)]])
    forward = nn.functional.normalize(pivot.view(1, 3) - origin, dim=-1)
    up = torch.tensor([[0.0, 1.0, 0.0]])
    right = -nn.functional.normalize(torch.cross(up, forward, dim=-1), dim=-1)
    up = nn.functional.normalize(torch.cross(forward, right, dim=-1), dim=-1)
    pose = torch.eye(4).unsqueeze(0)
    pose[:, :3, :3] = torch.stack((right, up, forward), dim=-1)
    pose[:, :3, 3] = origin
    return pose


def intrinsics(fov_deg: float = FOV_DEG) -> torch.Tensor:
    """Normalised pinhole intrinsics (3, 3), as EG3D's FOV_to_intrinsics computes them."""
    focal = 1 / (math.tan(fov_deg * 3.14159 / 360) * 1.414)
    return torch.tensor([[focal, 0, 0.5], [0, focal, 0.5], [0, 0, 1]])


def camera_params(yaw: float, pitch: float, pivot: torch.Tensor, radius: float) -> torch.Tensor:
    """=> (1, 25): 16 cam2world entries then 9 intrinsics, EG3D's conditioning layout."""
    return torch.cat([look_at_pose(yaw, pitch, pivot, radius).reshape(1, 16), intrinsics().reshape(1, 9)], dim=1)


# -- adapters ------------------------------------------------------------------------------------

class NVlabsGenerator(nn.Module):
    """What StyleGAN and EG3D adapters share: z -> W+ by the mapping network, W+ latents, seeds."""

    trainable_prefix = ""
    face_crop = FFHQ  # StyleGAN's and EG3D's faces are FFHQ-aligned: a photo is aligned by the same recipe

    def __init__(self, G: nn.Module, name: str, mapping: nn.Module):
        super().__init__()
        self.G, self.name = G, name
        self.z_dim, self.c_dim = int(G.z_dim), int(getattr(G, "c_dim", 0))
        self.latent_shape = (int(mapping.num_ws), int(G.w_dim))
        self.resolution = int(G.img_resolution)
        self.register_buffer("w_avg", mapping.w_avg.detach().float().clone(), persistent=False)

    @property
    def device(self) -> torch.device:
        return next(self.G.parameters()).device

    def _mapping_c(self, n: int) -> torch.Tensor:
        return torch.zeros(n, self.c_dim, device=self.device)

    @torch.no_grad()
    def sample_latents(self, n: int, generator: torch.Generator) -> torch.Tensor:
        z = torch.randn(n, self.z_dim, generator=generator, device=generator.device).to(self.device)
        return self.G.mapping(z, self._mapping_c(n), truncation_psi=1).float()

    def latents_for_seeds(self, seeds: Iterable[int]) -> torch.Tensor:
        return torch.cat([self.sample_latents(1, torch.Generator().manual_seed(int(s))) for s in seeds])

    def average_latent(self) -> torch.Tensor:
        return self.w_avg.view(1, 1, -1).expand(1, *self.latent_shape).clone()

    def sample_view(self, generator: torch.Generator):
        return None  # 2D generators have no camera

    def synthesize(self, w: torch.Tensor, view=None) -> torch.Tensor:
        return self.synthesize_with_representation(w, view)[0]

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        return self.synthesize(w)

    def trainable_parameters(self) -> list[nn.Parameter]:
        return [p for n, p in self.G.named_parameters() if n.startswith(self.trainable_prefix)]

    def train_mode(self) -> None:
        self.train()  # as the official code does; these networks have no BatchNorm


class StyleGANGenerator(NVlabsGenerator):
    """StyleGAN2/3 G_ema: W+ (num_ws, w_dim); the synthesis network is trained; MSE on the image."""

    trainable_prefix = "synthesis."

    def __init__(self, G: nn.Module, name: str):
        super().__init__(G, name, G.mapping)

    def synthesize_with_representation(self, w: torch.Tensor, view=None) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.G.synthesis(w, noise_mode="const").float()
        return x, x


class EG3DGenerator(NVlabsGenerator):
    """EG3D TriPlaneGenerator: camera-conditioned, tri-planes for the MSE term, backbone.synthesis trained."""

    trainable_prefix = "backbone.synthesis."

    def __init__(self, G: nn.Module, name: str):
        super().__init__(G, name, G.backbone.mapping)
        rk = G.rendering_kwargs
        # EG3D's train.py records its camera orbit under these keys (FFHQ: pivot (0, 0, 0.2), radius 2.7)
        pivot = torch.tensor(rk.get("avg_camera_pivot", [0.0, 0.0, 0.0]), dtype=torch.float32)
        self.cam = {"pivot": pivot, "radius": float(rk.get("avg_camera_radius", 2.7))}
        self.neural_rendering_resolution = int(G.neural_rendering_resolution)  # kept from the pickle
        self.register_buffer("c_cond", camera_params(math.pi / 2, math.pi / 2, **self.cam), persistent=False)
        self.register_buffer("c_front", self._view(0.0), persistent=False)

    def _view(self, yaw: float) -> torch.Tensor:
        return camera_params(math.pi / 2 + yaw, math.pi / 2 + PITCH_OFFSET, **self.cam)

    def _mapping_c(self, n: int) -> torch.Tensor:
        return self.c_cond.expand(n, -1)

    def sample_view(self, generator: torch.Generator) -> torch.Tensor:
        """One camera for an iteration: yaw ~ U(-pi/12, pi/12) around the front, pitch offset -0.2."""
        yaw = (torch.rand(1, generator=generator).item() * 2 - 1) * YAW_RANGE
        return self._view(yaw).to(self.device)

    def eval_views(self, n: int = 11) -> list[torch.Tensor]:
        """The cameras `verify` averages the identity over: n yaws evenly in +-pi/12 (the official evaluation)."""
        return [self._view(y).to(self.device) for y in torch.linspace(-YAW_RANGE, YAW_RANGE, n).tolist()]

    def synthesize_with_representation(self, w: torch.Tensor, view=None) -> tuple[torch.Tensor, torch.Tensor]:
        c = (self.c_front if view is None else view).expand(len(w), -1)
        # cache_backbone keeps the tri-planes of this very call: no second backbone pass for the MSE term
        out = self.G.synthesis(w, c, neural_rendering_resolution=self.neural_rendering_resolution,
                               noise_mode="const", cache_backbone=True)
        planes, self.G._last_planes = self.G._last_planes, None
        return out["image"].float(), planes
