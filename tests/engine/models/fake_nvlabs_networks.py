"""Small generators with NVlabs' interfaces, for the bring-your-own-model tests.

The tests copy this file into a temporary "NVlabs code" folder as `training/fake_networks.py`, build
the modules from there, pickle them as NVlabs does ({"G_ema": module, ...}) and load them through the
engine's real path (--trust-pickle, --nvlabs-code). The interfaces follow NVlabs' code:
- MappingNetwork(z, c, truncation_psi, truncation_cutoff, update_emas) => ws (N, num_ws, w_dim), `w_avg`;
- StyleGAN G: `mapping`, `synthesis(ws, noise_mode=...)`, z_dim, c_dim, w_dim, img_resolution;
- EG3D G: `backbone` (mapping + synthesis producing 96-channel tri-planes), `mapping(z, c)` with c scaled
  by rendering_kwargs['c_scale'], `synthesis(ws, c, neural_rendering_resolution, cache_backbone, ...)`
  returning {"image": ...}, `_last_planes`, `neural_rendering_resolution`, `rendering_kwargs`, `decoder`.
"""
import torch
from torch import nn


class MappingNetwork(nn.Module):
    def __init__(self, z_dim=16, c_dim=0, w_dim=8, num_ws=4):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.num_ws = z_dim, c_dim, w_dim, num_ws
        self.fc = nn.Linear(z_dim + c_dim, w_dim)
        self.register_buffer("w_avg", torch.randn(w_dim) * 0.1)

    def forward(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        x = torch.cat([z, c], dim=1) if self.c_dim else z
        w = torch.nn.functional.leaky_relu(self.fc(x), 0.2)
        w = self.w_avg.lerp(w, truncation_psi)
        return w.unsqueeze(1).repeat(1, self.num_ws, 1)


class SynthesisNetwork(nn.Module):
    """ws => (N, channels, res, res); noise_mode='random' adds noise, as NVlabs' layers do."""

    def __init__(self, w_dim=8, num_ws=4, channels=3, res=64, tanh=True):
        super().__init__()
        self.num_ws, self.channels, self.res, self.tanh = num_ws, channels, res, tanh
        self.fc = nn.Linear(w_dim * num_ws, channels * 8 * 8)
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, ws, noise_mode="random", update_emas=False, **kwargs):
        x = self.fc(ws.flatten(1)).view(-1, self.channels, 8, 8)
        x = self.conv(nn.functional.interpolate(x, size=self.res, mode="bilinear"))
        if noise_mode == "random":
            x = x + 0.1 * torch.randn_like(x)
        return torch.tanh(x) if self.tanh else x


class StyleGANLike(nn.Module):
    def __init__(self, z_dim=16, w_dim=8, num_ws=4, img_resolution=64):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution, self.num_ws = z_dim, 0, w_dim, img_resolution, num_ws
        self.mapping = MappingNetwork(z_dim, 0, w_dim, num_ws)
        self.synthesis = SynthesisNetwork(w_dim, num_ws, 3, img_resolution)


class Backbone(nn.Module):
    def __init__(self, z_dim, c_dim, w_dim, num_ws):
        super().__init__()
        self.mapping = MappingNetwork(z_dim, c_dim, w_dim, num_ws)
        self.synthesis = SynthesisNetwork(w_dim, num_ws, 96, 16, tanh=False)
        self.num_ws = num_ws


class EG3DLike(nn.Module):
    def __init__(self, z_dim=16, w_dim=8, num_ws=5, img_resolution=64):
        super().__init__()
        self.z_dim, self.c_dim, self.w_dim, self.img_resolution = z_dim, 25, w_dim, img_resolution
        self.backbone = Backbone(z_dim, 25, w_dim, num_ws)
        self.decoder = nn.Linear(96, 3)  # stands in for the OSG decoder + super-resolution (not trained by GUIDE)
        self.camera_head = nn.Linear(25, 3)
        self.neural_rendering_resolution = 32
        self.rendering_kwargs = {"c_scale": 1.0, "avg_camera_pivot": [0, 0, 0.2], "avg_camera_radius": 2.7}
        self._last_planes = None
        self.last_call = {}

    def mapping(self, z, c, truncation_psi=1, truncation_cutoff=None, update_emas=False):
        return self.backbone.mapping(z, c * self.rendering_kwargs.get("c_scale", 0), truncation_psi, truncation_cutoff)

    def synthesis(self, ws, c, neural_rendering_resolution=None, update_emas=False, cache_backbone=False,
                  use_cached_backbone=False, **synthesis_kwargs):
        if neural_rendering_resolution is None:
            neural_rendering_resolution = self.neural_rendering_resolution
        self.last_call = {"c": c.detach().clone(), "nrr": neural_rendering_resolution, **synthesis_kwargs}
        planes = self.backbone.synthesis(ws, **synthesis_kwargs)
        if cache_backbone:
            self._last_planes = planes
        low = nn.functional.interpolate(planes, size=neural_rendering_resolution, mode="bilinear")
        rgb = self.decoder(low.permute(0, 2, 3, 1)).permute(0, 3, 1, 2) + self.camera_head(c)[:, :, None, None]
        rgb = rgb + 0.01 * torch.rand(1, device=rgb.device)  # EG3D's stratified ray samples draw from the global RNG
        image = torch.tanh(nn.functional.interpolate(rgb, size=self.img_resolution, mode="bilinear"))
        return {"image": image, "image_raw": rgb}
