"""Photos without real people (the tests and the photo bench): the generator's own faces, whose identity is known,
resized, turned and placed into pictures the tests draw, saved as JPEG or PNG, or stored turned with an EXIF
orientation tag. """
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..engine import files, rundir


def generator_face(generator, seed: int) -> np.ndarray:
    """The generator's face at a seed => RGB uint8 (R, R, 3)."""
    from ..engine.images import to_uint8

    with torch.no_grad():
        return to_uint8(generator.synthesize(generator.latents_for_seeds([seed])))[0]


def background(width: int, height: int, seed: int):
    """A PIL picture with no face in it: a colour gradient, noise and a few rectangles and ellipses."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:height, :width] / max(width, height)
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    arr = c0 + (c1 - c0) * ((xx + yy) / 2)[:, :, None] + rng.normal(0, 8, (height, width, 3))
    im = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(im)
    for _ in range(6):
        x0, y0 = rng.uniform(0, width), rng.uniform(0, height)
        x1, y1 = x0 + rng.uniform(20, width / 3), y0 + rng.uniform(20, height / 3)
        shape = draw.rectangle if rng.random() < 0.5 else draw.ellipse
        shape((x0, y0, x1, y1), fill=tuple(int(v) for v in rng.uniform(0, 255, 3)))
    return im


def compose(faces: list[np.ndarray], out: Path, size: tuple[int, int] = (512, 512), face_px=(150,),
            at=((0.7, 0.3),), angles=None, seed: int = 0, quality: int | None = 90, exif_orientation: int | None = None,
            mode: str | None = None) -> Path:
    """Each face resized to face_px[i] (its 64 px frame scaled), turned by angles[i] degrees and centred at
    at[i] (fractions of width and height) on a background => a photo file. quality: JPEG quality (None: PNG).
    exif_orientation 6: the picture is stored turned 90 degrees clockwise's inverse, with the tag that turns it
    back (a phone's portrait photo). mode: convert before saving (e.g. "L", "I;16", "P", "RGBA", "CMYK")."""
    from PIL import Image

    im = background(*size, seed=seed)
    angles = angles or [0.0] * len(faces)
    if not len(faces) == len(face_px) == len(at) == len(angles):
        raise ValueError("one size, place and angle per face")
    for face, px, (fx, fy), angle in zip(faces, face_px, at, angles):
        f = Image.fromarray(face).resize((px, px), Image.LANCZOS)
        mask = Image.new("L", f.size, 255)
        if angle:
            f = f.rotate(angle, resample=Image.BICUBIC, expand=True)
            mask = mask.rotate(angle, resample=Image.BICUBIC, expand=True)
        im.paste(f, (int(fx * size[0] - f.size[0] / 2), int(fy * size[1] - f.size[1] / 2)), mask)
    exif = None
    if exif_orientation == 6:  # shown upright after a 90 degree clockwise turn: store it turned the other way
        im = im.transpose(Image.Transpose.ROTATE_90)
        exif = Image.Exif()
        exif[0x0112] = 6
    if mode == "I;16":
        grey = np.asarray(im.convert("L"), dtype=np.uint16) * 257
        im = Image.fromarray(grey)  # 16-bit greyscale
    elif mode is not None:
        im = im.convert(mode)
    kw = {"exif": exif} if exif is not None else {}
    if quality is not None and mode not in ("I;16", "RGBA", "P"):
        im.save(out, format="JPEG", quality=quality, **kw)
    else:
        im.save(out, format="PNG", **kw)
    return out


# -- the photo bench: python -m guide_engine.bench.photos --seeds 900-907 --out results/photos ----------------------
# Each seed's face goes into one of these compositions (cycled), the engine forgets it from the photo and verifies;
# the figures say how close the generator's face at w_u came to the true face (the judge's distance), what verify
# concluded, and how long finding and aligning the face took.
COMPOSITIONS = [
    ("150 px in a 512 px scene, top right", dict(face_px=(150,), at=((0.7, 0.3),))),
    ("90 px, low left, turned -10 deg", dict(face_px=(90,), at=((0.2, 0.8),), angles=(-10,))),
    ("300 px, turned 15 deg", dict(face_px=(300,), at=((0.5, 0.5),), angles=(15,))),
    ("200 px, stored turned (EXIF 6)", dict(face_px=(200,), exif_orientation=6)),
    ("120 px, JPEG quality 40", dict(face_px=(120,), quality=40)),
    ("110 px in a 900 x 500 picture", dict(face_px=(110,), size=(900, 500), at=((0.8, 0.5),))),
    ("160 px beside another face (110 px)", dict(face_px=(160, 110), at=((0.7, 0.3), (0.25, 0.7)))),
    ("tight 128 px crop, JPEG", dict(face_px=(128,), size=(128, 128), at=((0.5, 0.5),), quality=85)),
]


def centre_crop(photo: Path, size: int) -> torch.Tensor:
    """What the engine did before it found faces: the whole picture centre-cropped to a square and resized =>
    (1, 3, size, size) in [-1, 1]."""
    from PIL import Image

    from ..engine.faces import read_photo

    im = Image.fromarray(read_photo(photo))
    side = min(im.size)
    left, top = (im.size[0] - side) // 2, (im.size[1] - side) // 2
    im = im.crop((left, top, left + side, top + side)).resize((size, size), Image.LANCZOS)
    return torch.from_numpy(np.asarray(im, dtype=np.float32)).permute(2, 0, 1)[None] / 127.5 - 1


def centre_crop_figure(G, J, D, photo: Path, truth: torch.Tensor) -> float:
    """The centre crop inverted => the judge's distance between the face at that w_u and the true face."""
    from ..guide.invert import invert

    w, _ = invert(G, D, centre_crop(photo, G.resolution), progress=False)
    with torch.no_grad():
        return J.distance(J.descriptors(G.synthesize(w)), J.descriptors(truth)).item()


def main(argv=None) -> None:
    """Per photo: finding and aligning the face (wall time), the inversion of the aligned crop and of the whole
    picture centre-cropped (the judge's distance from each w_u's face to the true face), whether verify would call
    the person drawn; for the first --full photos also the whole `unlearn` + `verify` with the CLI given."""
    import argparse
    import json
    import subprocess
    import time

    from ..engine.faces import load_face
    from ..engine.files import state_sha256
    from ..engine.images import parse_seeds
    from ..engine.models import zoo
    from ..guide.calibration import calibrate
    from ..guide.invert import invert

    ap = argparse.ArgumentParser(description=main.__doc__)
    ap.add_argument("--seeds", default="900-907")
    ap.add_argument("--out", default="results/photos")
    ap.add_argument("--full", type=int, default=8, help="photos that also get a whole unlearn + verify")
    ap.add_argument("--cli", default="guide-engine", help="the guide-engine executable for the whole runs")
    ap.add_argument("--attack-starts", default="8")
    ap.add_argument("--attack-steps", default="300")
    args = ap.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    G, J, D = zoo.load_generator(), zoo.load_judge(), zoo.load_identity()
    line = calibrate(G, J, state_sha256(G))["strangers_dist_p1"]
    dist = lambda a, b: J.distance(J.descriptors(a), J.descriptors(b)).item()  # noqa: E731
    rows = []
    for i, seed in enumerate(parse_seeds(args.seeds)):
        what, kw = COMPOSITIONS[i % len(COMPOSITIONS)]
        faces = [generator_face(G, seed)] + [generator_face(G, seed + 10_000)] * (len(kw["face_px"]) - 1)
        photo = compose(faces, out / f"photo_{seed}.jpg", seed=seed, **kw)
        truth = torch.from_numpy(faces[0].astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            aligned = load_face(photo, G)
            times.append(time.perf_counter() - t0)
        w, _ = invert(G, D, aligned.image, progress=False)
        with torch.no_grad():
            x = G.synthesize(w)
        row = {"seed": seed, "photo": what, "detect_align_s_median": float(np.median(times[1:])),
               "judge_aligned_crop_vs_true_face": dist(aligned.image, truth),
               "judge_w_u_vs_true_face": dist(x, truth),
               "judge_w_u_vs_true_face_centre_crop": centre_crop_figure(G, J, D, photo, truth),
               "judge_w_u_vs_photo": dist(x, aligned.image), "drawn_line": line}
        row["drawn_at_w_u"] = row["judge_w_u_vs_photo"] < line
        if i < args.full:
            run = out / f"run_{seed}"
            t0 = time.perf_counter()
            if not run.exists():
                subprocess.run([args.cli, "unlearn", "--image", str(photo), "--out", str(run), "-q"], check=True)
            t1 = time.perf_counter()
            subprocess.run([args.cli, "verify", str(run), "--image", str(photo), "-q", "--json", "--attack-starts",
                            args.attack_starts, "--attack-steps", args.attack_steps], capture_output=True)
            report = json.loads((run / rundir.REPORT).read_text())
            row.update(outcome=report.get("outcome"), passed=report["passed"],
                       judge_at_w_u=report["identity"]["judge_id_dist"],
                       attack_judge_best=report["attack"]["judge_best"], unlearn_s=round(t1 - t0, 1),
                       verify_s=round(time.perf_counter() - t1, 1))
        rows.append(row)
        print(json.dumps(row), flush=True)
        files.write_json(out / "rows.json", rows)


if __name__ == "__main__":
    main()
