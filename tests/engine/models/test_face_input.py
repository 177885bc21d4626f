"""The crops the recognition networks take: a face with the template's proportions, anywhere and at any angle in
a photo, FFHQ-aligned (as for StyleGAN / EG3D) and cut by the five-point crop, has its five landmarks where
ArcFace's template puts them."""
import math

import numpy as np
import pytest
import torch

from guide_engine.engine.crops import ARCFACE_112, FFHQ
from guide_engine.engine.faces import warp
from guide_engine.engine.models.dcgan import DCGANGenerator
from guide_engine.engine.models.face_input import INPUT_SIZE, crop_for, face_input


def _dots(points: np.ndarray, shape: tuple[int, int], sigma: float) -> np.ndarray:
    yy, xx = np.mgrid[:shape[0], :shape[1]] + 0.5  # pixel centres
    img = sum(np.exp(-((xx - x) ** 2 + (yy - y) ** 2) / (2 * sigma ** 2)) for x, y in points)
    return np.repeat((np.clip(img, 0, 1) * 255).round().astype(np.uint8)[..., None], 3, axis=2)


def _centroids(img: np.ndarray, near: np.ndarray, r: int = 6) -> np.ndarray:
    out = []
    for x, y in near:
        x0, y0 = int(x) - r, int(y) - r
        win = img[y0:y0 + 2 * r + 1, x0:x0 + 2 * r + 1].astype(np.float64)
        win = np.clip(win - win.max() / 4, 0, None)  # the blob, not its neighbours' tails
        yy, xx = np.mgrid[:win.shape[0], :win.shape[1]] + 0.5
        out.append(((xx * win).sum() / win.sum() + x0, (yy * win).sum() / win.sum() + y0))
    return np.array(out)


@pytest.mark.parametrize("scale,angle,frame", [(4.0, 12.0, 256), (2.5, -20.0, 512)])
def test_five_point_crop_of_an_ffhq_frame_lands_the_landmarks_on_the_template(scale, angle, frame):
    template = np.asarray(ARCFACE_112)
    a = math.radians(angle)
    R = scale * np.array([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    marks = (template - 56) @ R.T + (310, 290)  # the face, turned and scaled, somewhere in a 640 x 600 photo
    photo = _dots(marks, (600, 640), sigma=2.0 * scale)
    aligned = warp(photo, FFHQ.transform(marks, frame), frame)  # what an FFHQ-aligned generator draws
    x = torch.from_numpy(aligned.copy()).permute(2, 0, 1)[None].float() / 127.5 - 1
    cut = face_input(x, "five-point")
    assert cut.shape == (1, 3, INPUT_SIZE, INPUT_SIZE)
    seen = _centroids(((cut[0, 0] + 1) * 127.5).numpy(), template)
    np.testing.assert_allclose(seen, template, atol=0.5)  # pixels of the 112 px input
    whole = _centroids(((face_input(x, "full")[0, 0] + 1) * 127.5).numpy(), template)
    assert np.abs(whole - template).max() > 3  # the whole frame resized is not that crop


def test_the_crop_follows_the_generator_and_passes_gradients():
    assert crop_for(FFHQ) == "five-point" and crop_for(DCGANGenerator.face_crop) == "full" and crop_for(None) == "full"
    x = torch.rand(2, 3, 1024, 1024, requires_grad=True)
    face_input(x * 2 - 1, "five-point").sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    with pytest.raises(ValueError):
        face_input(x, "ffhq")
