"""The embedded default identity network: dlib's ResNet face descriptor, ported to PyTorch.

`dlib_face_recognition_resnet_model_v1.dat` (5,614,592 parameters, 128-d, 99.38% on LFW by dlib's
figure), read by `dlib_format.read_dat` into `DlibResNet`, which matches dlib's own
`compute_face_descriptor` (tests/engine/test_dlib_parity.py) and, unlike dlib, gives gradients.

| stage   | operations                                                     | output     |
| input   | (pixel - avg_rgb) / 256, RGB pixels on the uint8 scale          | 3x150x150  |
| stem    | conv 7x7 s2 -> affine -> relu -> maxpool 3x3 s2                 | 32x35x35   |
| level 4 | 3 residual blocks                                              | 32x35x35   |
| level 3 | down block 32->64, 3 residual blocks                           | 64x17x17   |
| level 2 | down block 64->128, 2 residual blocks                          | 128x8x8    |
| level 1 | down block 128->256, 2 residual blocks                         | 256x4x4    |
| level 0 | down block 256->256                                            | 256x2x2    |
| head    | global average pool -> fc 256->128 (no bias)                   | 128        |
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..protocols import FrozenIdentityNet
from .dlib_format import read_dat

INPUT_SIZE = 150
DLIB_THRESHOLD = 0.6  # dlib's same-person threshold on the Euclidean distance of raw descriptors


def _add_zero_extended(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """dlib's add_prev_: tensors of different sizes are zero-extended at the high end (extra channels,
    bottom rows, right columns) and summed at the larger size. (Cropping instead is off by 0.29,
    padding top-left by 0.15.)"""
    if a.shape == b.shape:
        return a + b
    c, h, w = (max(a.shape[i], b.shape[i]) for i in (1, 2, 3))

    def extend(t: torch.Tensor) -> torch.Tensor:
        return F.pad(t, (0, w - t.shape[3], 0, h - t.shape[2], 0, c - t.shape[1]))

    return extend(a) + extend(b)


class Affine(nn.Module):
    """dlib's affine_ layer (BatchNorm folded): y = gamma[c] * x + beta[c]."""

    def __init__(self, c: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.ones(c))
        self.beta = nn.Parameter(torch.zeros(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.beta.view(1, -1, 1, 1), x, self.gamma.view(1, -1, 1, 1))


class ResBlock(nn.Module):
    """relu(x + affine(conv3x3(relu(affine(conv3x3(x))))));
    down: the first conv is 3x3 stride 2 padding 0, the shortcut avgpool 2x2 s2 of x, zero-extended."""

    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        self.down = down
        stride, pad = (2, 0) if down else (1, 1)
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, pad)
        self.aff1 = Affine(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1)
        self.aff2 = Affine(cout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.aff2(self.conv2(F.relu(self.aff1(self.conv1(x)))))
        shortcut = F.avg_pool2d(x, 2, 2) if self.down else x
        return F.relu(_add_zero_extended(y, shortcut))


class DlibResNet(nn.Module):
    """(N, 3, 150, 150) RGB on the [0, 255] scale (need not be integers) => (N, 128) raw descriptors."""

    BLOCKS = ([(32, 32, False)] * 3 + [(32, 64, True)] + [(64, 64, False)] * 3 + [(64, 128, True)]
              + [(128, 128, False)] * 2 + [(128, 256, True)] + [(256, 256, False)] * 2 + [(256, 256, True)])
    FEATURE_TAPS = (2, 6, 9, 12)  # last block of levels 4, 3, 2, 1: (32,35,35) (64,17,17) (128,8,8) (256,4,4)

    def __init__(self):
        super().__init__()
        self.register_buffer("avg_rgb", torch.tensor([122.782, 117.001, 104.298]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 32, 7, 2, 0)
        self.aff = Affine(32)
        self.blocks = nn.ModuleList([ResBlock(a, b, d) for a, b, d in self.BLOCKS])
        self.fc = nn.Linear(256, 128, bias=False)

    def forward_features(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """=> ([stem output, level 4, 3, 2, 1 outputs], descriptors (N, 128))."""
        x = (x - self.avg_rgb) / 256.0
        x = F.max_pool2d(F.relu(self.aff(self.conv(x))), 3, 2)
        feats = [x]
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i in self.FEATURE_TAPS:
                feats.append(x)
        return feats, self.fc(x.mean(dim=(2, 3)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_features(x)[1]

    @classmethod
    def from_dat(cls, path: str) -> "DlibResNet":
        net = read_dat(path)
        m = cls()
        m.avg_rgb.copy_(torch.tensor(net.avg_rgb, dtype=torch.float32).view(1, 3, 1, 1))
        layers = iter(layer for layer in net.layers if layer["type"] not in ("tag", "skip", "relu", "add_prev"))

        def take(kind: str) -> dict:
            layer = next(layers)
            assert layer["type"] == kind, (layer["type"], kind)  # read_dat already checked the topology
            return layer

        def set_conv(conv: nn.Conv2d, layer: dict) -> None:
            assert tuple(conv.weight.shape) == layer["weight"].shape
            assert tuple(conv.stride) == layer["stride"] and tuple(conv.padding) == layer["padding"]
            conv.weight.data.copy_(torch.from_numpy(layer["weight"]))
            conv.bias.data.copy_(torch.from_numpy(layer["bias"]))

        def set_affine(aff: Affine, layer: dict) -> None:
            aff.gamma.data.copy_(torch.from_numpy(layer["gamma"]))
            aff.beta.data.copy_(torch.from_numpy(layer["beta"]))

        set_conv(m.conv, take("con"))
        set_affine(m.aff, take("affine"))
        take("max_pool")
        for b in m.blocks:
            set_conv(b.conv1, take("con"))
            set_affine(b.aff1, take("affine"))
            set_conv(b.conv2, take("con"))
            set_affine(b.aff2, take("affine"))
            if b.down:
                take("avg_pool")
        take("avg_pool")  # avg_pool_everything
        m.fc.weight.data.copy_(torch.from_numpy(take("fc_no_bias")["weight"].T.copy()))  # dlib stores (in, out)
        assert next(layers, None) is None
        return m.eval()


class DlibIdentity(FrozenIdentityNet):
    """dlib's descriptor network behind the `protocols.IdentityNetwork` interface.

    Generator images in [-1, 1] are resized to 150x150 (bilinear) and mapped to x * 127.5 + 127.5.
    The 64x64 DCGAN faces are already roughly aligned; dlib's own landmark alignment is not part of
    the port. dlib's descriptors are not unit-norm (norms about 1.25 to 1.45); `embed` normalises.
    """

    dim = 128
    threshold = DLIB_THRESHOLD
    distance_name = "euclidean distance of raw dlib descriptors"
    feature_name = "dlib"

    def __init__(self, net: DlibResNet, name: str = "dlib-resnet-v1"):
        super().__init__(net, name)

    def to_input(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) in [-1, 1] => (N, 3, 150, 150) on the [0, 255] scale."""
        if images.shape[-1] != INPUT_SIZE or images.shape[-2] != INPUT_SIZE:
            images = F.interpolate(images, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        return images * 127.5 + 127.5

    def distance(self, desc_a: torch.Tensor, desc_b: torch.Tensor) -> torch.Tensor:
        return (desc_a - desc_b).norm(dim=1)
