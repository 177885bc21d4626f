"""Image I/O: photos in, grids out. Tensors are NCHW float32 RGB in [-1, 1]."""
from __future__ import annotations

import math
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from .errors import GuideEngineError
from .files import atomic_write

LINE_H = 12  # pixels per line of PIL's default font


def load_png(path: str | Path, size: int) -> torch.Tensor:
    """An image the engine wrote itself (a run's aligned.png) => (1, 3, size, size) in [-1, 1]. A user's photo
    goes through engine/faces.py instead: found, aligned, converted."""
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        if im.size != (size, size):
            raise GuideEngineError(f"{path}: {im.size[0]}x{im.size[1]}, not the generator's {size}x{size}")
        arr = torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None]
    return arr / 127.5 - 1.0


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, 3, H, W) in [-1, 1] => (N, H, W, 3) uint8."""
    x = ((images.detach().float().cpu().clamp(-1, 1) + 1) * 127.5).round()
    return x.to(torch.uint8).permute(0, 2, 3, 1).numpy()


def save_png(image: torch.Tensor, path: str | Path, private: bool = False) -> None:
    """(1, 3, H, W) or (3, H, W) in [-1, 1] => PNG, written atomically (`private`: readable by its owner only)."""
    from PIL import Image

    arr = to_uint8(image if image.dim() == 4 else image[None])[0]
    atomic_write(Path(path), lambda tmp: Image.fromarray(arr).save(tmp, format="PNG"), private)


def make_grid(images: torch.Tensor, nrow: int | None = None, pad: int = 2,
              row_labels: Sequence[str] | None = None, captions: Sequence[str] | None = None,
              scale: int = 1):
    """(N, 3, H, W) in [-1, 1] => a PIL image: `nrow` images per row, optional label per row (left)
    and caption per image (below; may hold several lines)."""
    from PIL import Image, ImageDraw

    arr = to_uint8(images)
    n, h, w, _ = arr.shape
    nrow = nrow or math.ceil(math.sqrt(n))
    rows = math.ceil(n / nrow)
    h, w = h * scale, w * scale
    cap_h = LINE_H * max(c.count("\n") + 1 for c in captions) if captions else 0
    label_w = 8 + 7 * max((len(s) for s in row_labels), default=0) if row_labels else 0
    canvas = Image.new("RGB", (label_w + nrow * (w + pad) + pad, rows * (h + pad + cap_h) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        r, c = divmod(i, nrow)
        x, y = label_w + pad + c * (w + pad), pad + r * (h + pad + cap_h)
        canvas.paste(Image.fromarray(arr[i]).resize((w, h), Image.NEAREST), (x, y))
        if captions:
            draw.text((x + 1, y + h), captions[i], fill="black")
    for r, label in enumerate(row_labels or []):
        draw.text((3, pad + r * (h + pad + cap_h) + h // 2 - 5), label, fill="black")
    return canvas


def save_grid(images: torch.Tensor, path: str | Path, **kw) -> None:
    grid = make_grid(images, **kw)
    atomic_write(Path(path), lambda tmp: grid.save(tmp, format="PNG"))


def save_stack(parts: list, path: str | Path, pad: int = 4) -> None:
    """PIL images and blocks of text (lists of lines), stacked top to bottom on white => PNG, atomically."""
    from PIL import Image, ImageDraw

    char_w = 6  # PIL's default font
    sizes = [p.size if isinstance(p, Image.Image) else (char_w * max(map(len, p)) + 2 * pad, LINE_H * len(p) + pad)
             for p in parts]
    canvas = Image.new("RGB", (max(w for w, _ in sizes) + 2 * pad, sum(h for _, h in sizes) + pad), "white")
    draw, y = ImageDraw.Draw(canvas), pad
    for part, (_, h) in zip(parts, sizes):
        if isinstance(part, Image.Image):
            canvas.paste(part, (pad, y))
        else:
            for k, line in enumerate(part):
                draw.text((2 * pad, y + k * LINE_H), line, fill="black")
        y += h
    atomic_write(Path(path), lambda tmp: canvas.save(tmp, format="PNG"))


SEED_MAX = 2**31 - 1  # the largest seed a request may name (the server's and the forget service's bound)


def seed_ranges(text: str) -> list[range]:
    """'0-3,7,10-11' => [range(0, 4), range(7, 8), range(10, 12)]: lazy, so '0-100000000' costs nothing."""
    ranges: list[range] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part:
                lo, hi = (int(v) for v in part.split("-", 1))
                if hi < lo or lo < 0:
                    raise ValueError
                ranges.append(range(lo, hi + 1))
            elif part:
                if int(part) < 0:
                    raise ValueError
                ranges.append(range(int(part), int(part) + 1))
    except ValueError:
        raise GuideEngineError(f"--seeds {text!r}: expected non-negative seeds like 0-15 or 1,4,9") from None
    if not ranges:
        raise GuideEngineError(f"--seeds {text!r}: expected non-negative seeds like 0-15 or 1,4,9")
    return ranges


def parse_seeds(text: str, limit: int = 1_000_000) -> list[int]:
    """'0-3,7,10-11' => [0, 1, 2, 3, 7, 10, 11]; more than `limit` seeds is refused (use seed_ranges)."""
    ranges = seed_ranges(text)
    if sum(len(r) for r in ranges) > limit:
        raise GuideEngineError(f"--seeds {text!r}: more than {limit} seeds")
    return [s for r in ranges for s in r]
