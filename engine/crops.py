"""Where a generator's faces sit in its frame: each generator adapter declares one crop, and a photo's face is
aligned to it (engine/faces.py) before inversion, target search or an attacker see it.

A crop turns five landmarks found in a photo (eyes, nose tip, mouth corners, image-left first: YuNet's order,
engine/models/yunet.py) into a similarity transform, no shear, from the generator's output pixels to the
photo's pixels, as a 2 x 3 matrix A: photo (x, y) = A @ (u, v, 1) for output (u, v) in [0, resolution].

- TemplateCrop: the five points where the generator's own faces have them (the default DCGAN's are measured
  from its samples with the same detector, `measure_template`), fitted by least squares (Umeyama).
- FFHQCrop: NVlabs' FFHQ recipe (ffhq-dataset `recreate_aligned_images`), used by StyleGAN and EG3D: eye and
  mouth averages give an oriented square around the face; YuNet's eye centres stand in for the mean of dlib's
  six eye points.
- ARCFACE_112: where the field's recognition networks want the five landmarks in their 112 px input (ArcFace,
  EdgeFace, SFace were trained on faces warped onto it). `arcface_in_ffhq` places that input in an FFHQ frame:
  the face whose landmarks are the template, FFHQ-aligned, has them there, so an FFHQ-aligned generator's
  faces are cut for these networks by one fixed similarity (engine/models/face_input.py).
Pure NumPy: the model adapters import this module, it imports nothing of the engine.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def similarity(src: np.ndarray, dst: np.ndarray) -> np.ndarray:
    """The least-squares similarity (rotation, uniform scale, translation; no reflection, no shear) taking the
    points src (K, 2) to dst (K, 2) => A (2, 3) with dst ~ A @ (x, y, 1). Closed form on complex numbers:
    dst = a src + b with a = s e^(i theta)."""
    p = src[:, 0] + 1j * src[:, 1]
    q = dst[:, 0] + 1j * dst[:, 1]
    pc, qc = p - p.mean(), q - q.mean()
    a = (np.conj(pc) * qc).sum() / (np.abs(pc) ** 2).sum()
    b = q.mean() - a * p.mean()
    return np.array([[a.real, -a.imag, b.real], [a.imag, a.real, b.imag]])


@dataclass(frozen=True)
class TemplateCrop:
    """The generator's faces have their five landmarks at `points`, in pixels of a `size` x `size` image."""

    points: tuple[tuple[float, float], ...]
    size: int
    name: str = "template"

    def transform(self, landmarks: np.ndarray, resolution: int) -> np.ndarray:
        template = np.asarray(self.points, dtype=np.float64) * (resolution / self.size)
        return similarity(template, np.asarray(landmarks, dtype=np.float64))


@dataclass(frozen=True)
class FFHQCrop:
    """NVlabs' FFHQ alignment from the eyes and the mouth corners."""

    name: str = "ffhq"

    @staticmethod
    def quad(landmarks: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """=> (centre c, half-side vector x, half-side vector y): the quad is c - x - y, c - x + y, c + x + y,
        c + x - y."""
        lm = np.asarray(landmarks, dtype=np.float64)
        eye_left, eye_right, mouth_left, mouth_right = lm[0], lm[1], lm[3], lm[4]
        eye_avg = (eye_left + eye_right) / 2
        eye_to_eye = eye_right - eye_left
        eye_to_mouth = (mouth_left + mouth_right) / 2 - eye_avg
        x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
        x /= np.hypot(*x)
        x *= max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
        y = np.flipud(x) * [-1, 1]
        return eye_avg + eye_to_mouth * 0.1, x, y

    def transform(self, landmarks: np.ndarray, resolution: int) -> np.ndarray:
        c, x, y = self.quad(landmarks)
        top_left = c - x - y
        return np.stack([2 * x / resolution, 2 * y / resolution, top_left], axis=1)


FFHQ = FFHQCrop()


def crop_of(generator):
    """The generator adapter's declared crop (its `face_crop`); FFHQ's recipe for one that declares none, the
    NVlabs default. Every place that aligns a photo or cuts a face for a network asks this, so that all agree."""
    return getattr(generator, "face_crop", None) or FFHQ


# InsightFace's `arcface_dst` (OpenCV's FaceRecognizerSF.alignCrop uses the same five points): left eye, right eye,
# nose tip, left and right mouth corner, in pixels of the 112 x 112 input
ARCFACE_112 = ((38.2946, 51.6963), (73.5318, 51.5014), (56.0252, 71.7366), (41.5493, 92.3655), (70.7299, 92.2041))


def arcface_in_ffhq(size: int = 112) -> np.ndarray:
    """B (2, 3): a pixel (u, v) of the `size` px five-point input lies in an FFHQ-aligned frame at B @ (u, v, 1),
    as fractions of the frame's side. FFHQ's recipe is a similarity of the landmarks, so the frame of a face whose
    landmarks are ARCFACE_112 (scaled to `size`) is that face's input up to one similarity: its inverse."""
    points = np.asarray(ARCFACE_112, dtype=np.float64) * (size / 112)
    A = FFHQ.transform(points, 1)  # frame fraction => input pixel
    M_inv = np.linalg.inv(A[:, :2])
    return np.hstack([M_inv, -M_inv @ A[:, 2:]])
