"""LPIPS-VGG (the paper's perceptual loss) from the `lpips` package, with every weight read from disk.

    --lpips-vgg /path/to/vgg16-397923af.pth     (torchvision's ImageNet VGG16 state dict)

`lpips.LPIPS(net="vgg")` would fetch the VGG16 backbone through torchvision's model hub; here the
backbone is built untrained (`pnet_rand=True`, nothing downloaded) and its weights are loaded from the
user's file. LPIPS's own linear calibration layers ship inside the `lpips` package (weights/v0.1/vgg.pth).
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..errors import GuideEngineError


class LPIPSVGG(nn.Module):
    """(x_a, x_b) images in [-1, 1] => (N,) LPIPS distance; frozen."""

    def __init__(self, vgg16_weights: str | Path):
        super().__init__()
        try:
            import lpips
        except ImportError:
            raise GuideEngineError("--lpips-vgg needs the `lpips` package: pip install lpips") from None
        from ..files import read_state_dict

        path = Path(vgg16_weights)
        vgg = read_state_dict(path, "--lpips-vgg: torchvision's VGG16 ImageNet weights")
        self.path = str(path)
        self.lpips = lpips.LPIPS(net="vgg", pretrained=True, pnet_rand=True, verbose=False)
        # lpips' VGG slices keep torchvision's `features` indices as module names: slice2.4 = features.4
        state = {}
        for k in ("slice1", "slice2", "slice3", "slice4", "slice5"):
            for name, _ in getattr(self.lpips.net, k).named_parameters():
                state[f"{k}.{name}"] = vgg.get(f"features.{name}")
        missing = [k for k, v in state.items() if v is None]
        if missing:
            raise GuideEngineError(f"--lpips-vgg {path}: not torchvision VGG16 weights (no {missing[0]})")
        self.lpips.net.load_state_dict(state)
        self.eval().requires_grad_(False)

    def forward(self, x_a: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        return self.lpips(x_a, x_b).flatten()
