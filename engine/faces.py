"""From a user's photo to the generator's crop: read it, find the face, align it.

    read_photo   any file Pillow reads => RGB uint8 (H, W, 3): EXIF orientation applied; greyscale, palette,
                 alpha, CMYK and 16-bit images converted; a decompression bomb refused before it is decoded
    find_faces   => every face YuNet finds (engine/models/yunet.py), largest first. The picture is padded
                 first (a face that fills the frame, like the generator's own 64 px faces, touches the border
                 and detectors miss it there), and the chosen face is detected again in a crop around it, so
                 its landmarks come from a view where the face is large whatever the photo's size
    align        the face => the generator's crop (engine/crops.py: its adapter's `face_crop`), at its
                 resolution: a similarity warp, supersampled, reflect padding faded toward the median colour
                 where the crop leaves the photo (FFHQ's recipe)
    load_face    all three => AlignedFace: the crop as a tensor, and where the face was (box, landmarks,
                 score, every face's box) for the run's ledger

What leaves here is what inversion, target search, the attackers and the ledger's checks see; the run keeps
it as aligned.png. A photo without a face, with a face too small to align, or a --face that is not there,
gets a one-line error before anything is written.
"""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from .crops import crop_of
from .errors import GuideEngineError
from .models.yunet import Face

MIN_SIDE = 32  # a photo smaller than this is refused before detection
MAX_PIXELS = 64_000_000  # larger headers are refused before decoding (a decompression bomb)
PAD_FRAC = 0.25  # of the longer side, on each side, before detection
REFINE_FRAC = 2.0  # the second look: a square of this many box sides around the chosen face
MIN_FACE_PX = 24  # a face box narrower than this (in the photo's pixels) is too small to align
MAX_SUPERSAMPLE = 8


@dataclass
class AlignedFace:
    image: torch.Tensor  # (1, 3, R, R) in [-1, 1]: the face in the generator's crop
    face: Face  # the chosen face, in the photo's pixels
    faces: list[Face]  # every face found, largest first
    chosen: int  # its index in `faces`
    crop: str  # the crop's name ("template", "ffhq")
    photo_size: tuple[int, int] = (0, 0)  # width, height after EXIF orientation
    seconds: dict = field(default_factory=dict)  # read, detect, align

    def record(self) -> dict:
        """What the ledger keeps of it (personal data, like w_u: the README's privacy note)."""
        return {**self.face.to_json(), "face": self.chosen, "faces_found": len(self.faces), "crop": self.crop,
                "photo_size": list(self.photo_size)}


# ---------------------------------------------------------------------------------------------------------------
def _to_rgb_array(im, where: str) -> np.ndarray:
    """A Pillow image of any mode => RGB uint8 (H, W, 3)."""
    from PIL import Image

    mode = im.mode
    if mode.startswith("I;16") or mode in ("I", "F"):  # high bit depth greyscale: scale, never clip
        arr = np.asarray(im).astype(np.float64)
        if mode == "F":
            lo, hi = (0.0, 1.0) if arr.min() >= 0 and arr.max() <= 1 else (0.0, 255.0)
        else:
            lo, hi = 0.0, 65535.0 if (mode.startswith("I;16") or arr.max() > 255) else 255.0
        if not np.isfinite(arr).all() or arr.min() < lo or arr.max() > hi:
            raise GuideEngineError(f"{where}: a {mode} image with values outside [{lo:g}, {hi:g}]; convert it to 8-bit "
                                   f"RGB first")
        grey = np.round(arr * (255.0 / hi)).astype(np.uint8)
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or (mode == "P" and "transparency" in im.info):
        rgba = im.convert("RGBA")
        grey = Image.new("RGBA", rgba.size, (128, 128, 128, 255))  # transparent parts become neutral grey
        return np.asarray(Image.alpha_composite(grey, rgba).convert("RGB"))
    try:
        return np.asarray(im.convert("RGB"))
    except (ValueError, OSError) as e:
        raise GuideEngineError(f"{where}: cannot convert a {mode} image to RGB ({e})") from None


def read_photo(path: str | Path, what: str = "--image") -> np.ndarray:
    """A photo file => RGB uint8 (H, W, 3), upright; one-line errors for anything that is not a usable photo."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    path = Path(path)
    where = f"{what} {path}"
    if not path.is_file():
        raise GuideEngineError(f"{where}: no such file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                w, h = im.size
                if w * h > MAX_PIXELS:
                    raise GuideEngineError(f"{where}: {w}x{h} is {w * h / 1e6:.0f} megapixels; at most "
                                           f"{MAX_PIXELS / 1e6:.0f} are read (a photo that large is refused "
                                           f"before it is decoded): scale it down first")
                im.load()
                im = ImageOps.exif_transpose(im)
                rgb = _to_rgb_array(im, where)
    except GuideEngineError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):  # Pillow's own limit, checked at open
        raise GuideEngineError(f"{where}: more megapixels than Pillow decodes safely (a decompression bomb?); at most "
                               f"{MAX_PIXELS / 1e6:.0f} are read: scale it down first") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise GuideEngineError(f"{where}: not a readable image ({type(e).__name__})") from None
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise GuideEngineError(f"{where}: {rgb.shape[1]}x{rgb.shape[0]} is too small; give a face photo of at least "
                               f"{MIN_SIDE}x{MIN_SIDE} px")
    return np.ascontiguousarray(rgb)


# ---------------------------------------------------------------------------------------------------------------
def _window(rgb: np.ndarray, x0: int, y0: int, side: int, fill: np.ndarray) -> np.ndarray:
    """The square [x0, x0 + side) x [y0, y0 + side) of the photo, `fill` where it leaves the photo."""
    h, w = rgb.shape[:2]
    out = np.empty((side, side, 3), np.uint8)
    out[:] = fill
    sx0, sy0, sx1, sy1 = max(0, x0), max(0, y0), min(w, x0 + side), min(h, y0 + side)
    if sx1 > sx0 and sy1 > sy0:
        out[sy0 - y0:sy1 - y0, sx0 - x0:sx1 - x0] = rgb[sy0:sy1, sx0:sx1]
    return out


def _padded(rgb: np.ndarray, pad: int, fill: np.ndarray) -> np.ndarray:
    h, w = rgb.shape[:2]
    out = np.empty((h + 2 * pad, w + 2 * pad, 3), np.uint8)
    out[:] = fill
    out[pad:pad + h, pad:pad + w] = rgb
    return out


def refine(rgb: np.ndarray, face: Face, detector) -> Face:
    """Detect again in a square around `face` (REFINE_FRAC box sides): the landmarks from a view where the face
    fills a good part of the detector's input. The face nearest the window's centre wins; none: `face` as it was."""
    fill = rgb.reshape(-1, 3).mean(0).astype(np.uint8)
    x, y, w, h = face.box
    side = max(8, int(round(REFINE_FRAC * max(w, h))))
    x0, y0 = int(round(x + w / 2 - side / 2)), int(round(y + h / 2 - side / 2))
    found = detector.detect(_window(rgb, x0, y0, side, fill))
    if not found:
        return face
    centre = np.array([side / 2, side / 2])
    best = min(found, key=lambda f: np.hypot(*(np.array(f.box[:2]) + np.array(f.box[2:]) / 2 - centre)))
    return best.moved(1.0, x0, y0)


def find_faces(rgb: np.ndarray, detector) -> list[Face]:
    """Every face in the photo, largest box first, in the photo's pixels (coarse landmarks: see `refine`)."""
    pad = int(round(PAD_FRAC * max(rgb.shape[:2])))
    fill = rgb.reshape(-1, 3).mean(0).astype(np.uint8)
    faces = [f.moved(1.0, -pad, -pad) for f in detector.detect(_padded(rgb, pad, fill))]
    return sorted(faces, key=lambda f: -f.area)


# ---------------------------------------------------------------------------------------------------------------
def _faded_pad(region: np.ndarray, pads: tuple[int, int, int, int]) -> np.ndarray:
    """FFHQ's padding: reflect by (left, top, right, bottom), then blur the padding and fade it toward the
    median colour the farther it lies from the photo."""
    from PIL import Image, ImageFilter

    left, top, right, bottom = pads
    img = np.pad(region.astype(np.float32), ((top, bottom), (left, right), (0, 0)), mode="reflect")
    h, w = img.shape[:2]
    yy, xx = np.ogrid[:h, :w]
    eps = 1e-6
    mask = np.maximum(1.0 - np.minimum(xx / max(left, eps), (w - 1 - xx) / max(right, eps)),
                      1.0 - np.minimum(yy / max(top, eps), (h - 1 - yy) / max(bottom, eps)))
    mask = np.clip(mask, 0.0, 1.0)[:, :, None].astype(np.float32)
    radius = max(1.0, 0.02 * max(h, w))
    picture = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    blurred = np.asarray(picture.filter(ImageFilter.GaussianBlur(radius)), dtype=np.float32)
    img += (blurred - img) * np.clip(mask * 3.0 + 1.0, 0.0, 1.0)
    img += (np.median(img, axis=(0, 1)) - img) * mask
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def warp(rgb: np.ndarray, A: np.ndarray, resolution: int) -> np.ndarray:
    """The photo seen through A (output pixels => photo pixels, a similarity) => (resolution, resolution, 3)
    uint8. Rendered at up to MAX_SUPERSAMPLE x the output size (bicubic) and reduced with Lanczos, so a large
    face is averaged, not point-sampled; a face far larger than that is box-reduced first."""
    from PIL import Image

    A = np.asarray(A, dtype=np.float64).copy()
    corners = A @ np.array([[0, 0, 1], [resolution, 0, 1], [0, resolution, 1], [resolution, resolution, 1]]).T
    x0, y0 = np.floor(corners.min(axis=1) - 2).astype(int)
    x1, y1 = np.ceil(corners.max(axis=1) + 2).astype(int)
    h, w = rgb.shape[:2]
    cx0, cy0, cx1, cy1 = max(0, x0), max(0, y0), min(w, x1), min(h, y1)
    if cx1 - cx0 < 2 or cy1 - cy0 < 2:
        raise GuideEngineError("the face's crop lies outside the photo")
    region = rgb[cy0:cy1, cx0:cx1]
    pads = (cx0 - x0, cy0 - y0, x1 - cx1, y1 - cy1)
    if any(pads):
        region = _faded_pad(region, pads)
    A[:, 2] -= (x0, y0)  # into the region's frame
    scale = math.hypot(A[0, 0], A[1, 0])  # photo pixels per output pixel
    img = Image.fromarray(region)
    if scale > 2 * MAX_SUPERSAMPLE:
        factor = int(scale // MAX_SUPERSAMPLE)
        img = img.reduce(factor)
        A /= factor
        scale /= factor
    k = int(min(MAX_SUPERSAMPLE, max(1, math.ceil(scale))))
    B = A[:, :2] / k  # the supersampled output's pixels => the region's
    coeffs = (B[0, 0], B[0, 1], A[0, 2], B[1, 0], B[1, 1], A[1, 2])
    big = img.transform((resolution * k, resolution * k), Image.AFFINE, coeffs, resample=Image.BICUBIC)
    return np.asarray(big.resize((resolution, resolution), Image.LANCZOS) if k > 1 else big)


# ---------------------------------------------------------------------------------------------------------------
@dataclass
class LocatedFace:
    rgb: np.ndarray  # the photo, upright RGB
    faces: list[Face]  # every face found, largest first
    chosen: int
    face: Face  # faces[chosen], landmarks refined
    seconds: dict


def locate_face(path: str | Path, detector=None, face: int | None = None, what: str = "--image") -> LocatedFace:
    """A photo => the chosen face (largest by default; `face` = its index, largest first), checked big enough
    to align; one-line errors otherwise. `detector`: a YuNetDetector (default: the zoo's)."""
    import time

    if detector is None:
        from .models import zoo

        detector = zoo.load_detector()
    t0 = time.perf_counter()
    rgb = read_photo(path, what)
    t1 = time.perf_counter()
    faces = find_faces(rgb, detector)
    where = f"{what} {path}"
    if not faces:
        raise GuideEngineError(f"{where}: no face found ({detector.name}, score >= {detector.score_threshold}); give a "
                               f"photo in which the face is visible, roughly frontal, at least {MIN_FACE_PX} px wide")
    k = 0 if face is None else face
    if not 0 <= k < len(faces):
        raise GuideEngineError(f"{where}: --face {k}, but {len(faces)} face{'s' if len(faces) > 1 else ''} found "
                               f"(0 = the largest): {describe_faces(faces)}")
    chosen = refine(rgb, faces[k], detector)
    bw, bh = chosen.box[2:]
    eyes = float(np.hypot(*(chosen.landmarks[1] - chosen.landmarks[0])))
    if min(bw, bh) < MIN_FACE_PX or eyes < MIN_FACE_PX / 4:
        raise GuideEngineError(f"{where}: the face is {bw:.0f}x{bh:.0f} px, too small to align (at least "
                               f"{MIN_FACE_PX} px wide); give a larger or closer photo of the face")
    return LocatedFace(rgb, faces, k, chosen, {"read": t1 - t0, "detect": time.perf_counter() - t1})


def load_face(path: str | Path, generator, detector=None, face: int | None = None,
              what: str = "--image") -> AlignedFace:
    """A photo => the chosen face aligned to the generator's crop (`locate_face`, then `warp`)."""
    import time

    found = locate_face(path, detector, face, what)
    t0 = time.perf_counter()
    crop = crop_of(generator)
    res = generator.resolution
    aligned = warp(found.rgb, crop.transform(found.face.landmarks, res), res)
    image = torch.from_numpy(aligned.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0
    return AlignedFace(image=image, face=found.face, faces=found.faces, chosen=found.chosen, crop=crop.name,
                       photo_size=(found.rgb.shape[1], found.rgb.shape[0]),
                       seconds={**found.seconds, "align": time.perf_counter() - t0})


def describe_faces(faces: list[Face]) -> str:
    return "; ".join(f"#{i} box {f.box[0]:.0f},{f.box[1]:.0f} {f.box[2]:.0f}x{f.box[3]:.0f} score {f.score:.2f}"
                     for i, f in enumerate(faces))


@torch.no_grad()
def measure_template(generator, detector, n: int = 512, seed0: int = 3_000_000) -> tuple[np.ndarray, int]:
    """Where the generator's own faces have their five landmarks: the mean over n samples (seeds seed0...) of
    what this module's own detection finds, in the generator's output pixels => (points (5, 2), faces found).
    The DCGAN's stored template came from here (engine/models/dcgan.py)."""
    from .images import to_uint8

    found = []
    for s in range(seed0, seed0 + n):
        rgb = to_uint8(generator.synthesize(generator.latents_for_seeds([s])))[0]
        faces = find_faces(rgb, detector)
        if faces:
            found.append(refine(rgb, faces[0], detector).landmarks)
    if not found:
        raise GuideEngineError(f"{generator.name}: no face found in {n} samples; give its crop by hand")
    return np.mean(found, axis=0), len(found)
