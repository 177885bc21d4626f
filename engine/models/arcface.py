"""ArcFace IR-SE50 (the identity network of the GUIDE paper), our own module definition.

    --identity arcface-ir-se50:/path/to/model_ir_se50.pth

The standard IR-SE50 layout of the InsightFace_Pytorch / pSp family, so `model_ir_se50.pth` loads with
its own key names: input_layer (conv 3x3, BN, PReLU), body (24 bottleneck units, each a BN-conv-PReLU-
conv-BN-SE residual branch plus an identity or conv-BN shortcut), output_layer (BN, dropout, flatten,
linear 512*7*7 -> 512, BN1d). Input 112x112; output 512-d, L2-normalised by `embed`.
Preprocessing, as the official GUIDE code does it for generator images: resize to 256 (bilinear),
crop [35:223, 32:220], average-pool to 112. Images stay in [-1, 1].
The weights file is a plain state dict, loaded with torch.load(weights_only=True): no code runs.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import GuideEngineError, first_line
from ..protocols import FrozenIdentityNet

PREFIX = "arcface-ir-se50:"
STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))  # (in, out, units), first unit strides 2


class SEModule(nn.Module):
    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.avg_pool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.relu = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)
        self.sigmoid = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.sigmoid(self.fc2(self.relu(self.fc1(self.avg_pool(x)))))


class BottleneckIRSE(nn.Module):
    def __init__(self, cin: int, depth: int, stride: int):
        super().__init__()
        if cin == depth:
            self.shortcut_layer = nn.MaxPool2d(1, stride)  # identity, subsampled when stride 2
        else:
            self.shortcut_layer = nn.Sequential(nn.Conv2d(cin, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(nn.BatchNorm2d(cin), nn.Conv2d(cin, depth, 3, 1, 1, bias=False), nn.PReLU(depth),
                                       nn.Conv2d(depth, depth, 3, stride, 1, bias=False), nn.BatchNorm2d(depth),
                                       SEModule(depth))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class IRSE50(nn.Module):
    """(N, 3, 112, 112) => (N, 512) raw (not normalised). `forward_features` also returns each stage's output."""

    def __init__(self, drop_ratio: float = 0.6):
        super().__init__()
        self.input_layer = nn.Sequential(nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for cin, depth, n in STAGES:
            units += [BottleneckIRSE(cin, depth, 2)] + [BottleneckIRSE(depth, depth, 1) for _ in range(n - 1)]
        self.body = nn.Sequential(*units)
        self.stage_ends = [sum(n for _, _, n in STAGES[:i + 1]) - 1 for i in range(len(STAGES))]  # 2, 6, 20, 23
        self.output_layer = nn.Sequential(nn.BatchNorm2d(512), nn.Dropout(drop_ratio), nn.Flatten(),
                                          nn.Linear(512 * 7 * 7, 512), nn.BatchNorm1d(512))

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        x = self.input_layer(x)
        taps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.stage_ends:
                taps.append(x)
        return taps, self.output_layer(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]


class ArcFaceIdentity(FrozenIdentityNet):
    """IR-SE50 behind `protocols.IdentityNetwork`; distance = 1 - cosine of the embeddings."""

    dim = 512
    threshold = None  # no fixed same-person threshold is published for this model: verify calibrates
    distance_name = "1 - cosine similarity of ArcFace IR-SE50 embeddings"
    feature_name = "arcface"

    def __init__(self, net: IRSE50, name: str):
        super().__init__(net, name)
        self.pool = nn.AdaptiveAvgPool2d((112, 112))

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        if images.shape[-2:] != (256, 256):
            images = F.interpolate(images, size=(256, 256), mode="bilinear")
        return self.pool(images[:, :, 35:223, 32:220])

    def distance(self, desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
        return 1 - F.cosine_similarity(desc_a, desc_b, dim=1)


def load_arcface(name: str) -> ArcFaceIdentity:
    """`arcface-ir-se50:PATH` => the network with the state dict at PATH (official key names)."""
    from ..files import read_state_dict

    path = Path(name[len(PREFIX):])
    state = read_state_dict(path, "ArcFace IR-SE50 weights, model_ir_se50.pth")
    net = IRSE50()
    try:
        net.load_state_dict({k.removeprefix("module.").removeprefix("facenet."): v for k, v in state.items()})
    except (RuntimeError, AttributeError) as e:
        raise GuideEngineError(f"{path}: not IR-SE50 weights ({first_line(e)})") from None
    return ArcFaceIdentity(net, name=name)
