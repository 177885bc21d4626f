"""A real photo in: found, aligned to the generator's crop, converted; one-line errors for what cannot be used.

The photos are the generator's own faces (ground truth known) placed into pictures the tests draw
(bench/photos.py); none is a photo of a real person."""
import struct
import zlib

import numpy as np
import pytest
import torch

from guide_engine.bench.photos import centre_crop, compose, generator_face
from guide_engine.engine.crops import FFHQ, TemplateCrop, similarity
from guide_engine.engine.errors import GuideEngineError
from guide_engine.engine.faces import find_faces, load_face, measure_template, read_photo
from guide_engine.engine.models import zoo
from guide_engine.engine.models.dcgan import FACE_TEMPLATE
from guide_engine.engine.models.yunet import decode, nms

SEED_A, SEED_B = 4101, 4102  # seeds no other test uses


@pytest.fixture(scope="module")
def detector():
    return zoo.load_detector()


@pytest.fixture(scope="module")
def judge():
    return zoo.load_judge()


def as_tensor(rgb: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(rgb.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1.0


def judge_dist(judge, a: torch.Tensor, b: torch.Tensor) -> float:
    return judge.distance(judge.descriptors(a), judge.descriptors(b)).item()


# -- the detector's decoding ---------------------------------------------------------------------------------------
def test_decode_places_box_and_landmarks_on_the_grid():
    """One confident cell at stride 16, column 3, row 5: the box centre is ((3 + dx) 16, (5 + dy) 16), its size
    exp(.) * 16, landmark k at ((kx + 3) 16, (ky + 5) 16); score sqrt(cls * obj); other cells stay under the line."""
    size = 640
    out = {}
    for s in (8, 16, 32):
        n = (size // s) ** 2
        out[f"cls_{s}"], out[f"obj_{s}"] = np.full((1, n, 1), 0.1, np.float32), np.full((1, n, 1), 0.1, np.float32)
        out[f"bbox_{s}"], out[f"kps_{s}"] = np.zeros((1, n, 4), np.float32), np.zeros((1, n, 10), np.float32)
    i = 5 * (size // 16) + 3
    out["cls_16"][0, i], out["obj_16"][0, i] = 0.81, 1.2  # obj clipped to 1
    out["bbox_16"][0, i] = (0.5, 0.25, np.log(4.0), np.log(5.0))
    out["kps_16"][0, i] = np.arange(10) / 10
    boxes, scores, marks = decode(out, size)
    assert len(boxes) == 1 and scores[0] == pytest.approx(0.9)
    np.testing.assert_allclose(boxes[0], [(3.5 - 2) * 16, (5.25 - 2.5) * 16, 64, 80], rtol=1e-5)
    np.testing.assert_allclose(marks[0], (np.arange(10).reshape(5, 2) / 10 + [3, 5]) * 16, rtol=1e-5)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 10, 10], [50, 50, 10, 10]], float)
    assert nms(boxes, np.array([0.7, 0.9, 0.8])) == [1, 2]


# -- the crops -----------------------------------------------------------------------------------------------------
def test_similarity_recovers_a_turned_scaled_moved_template():
    pts = np.asarray(FACE_TEMPLATE)
    a = 2.5 * np.exp(1j * np.deg2rad(12))
    moved = np.stack([(a * (pts[:, 0] + 1j * pts[:, 1])).real + 40, (a * (pts[:, 0] + 1j * pts[:, 1])).imag - 7], 1)
    A = similarity(pts, moved)
    np.testing.assert_allclose(A @ np.c_[pts, np.ones(5)].T, moved.T, atol=1e-9)
    assert A[0, 0] == pytest.approx(A[1, 1]) and A[0, 1] == pytest.approx(-A[1, 0])  # no shear, no reflection


def test_ffhq_crop_is_level_centred_and_a_similarity():
    """FFHQ's recipe: the eyes' midpoint lands on the vertical centre line, the eyes level, whatever the face's
    turn in the photo; the quad is a square (a similarity)."""
    lm = np.array([[100, 120], [160, 120], [130, 150], [108, 182], [152, 182]], float)
    for angle in (0, 10, -15):
        t = np.deg2rad(angle)
        R = np.array([[np.cos(t), -np.sin(t)], [np.sin(t), np.cos(t)]])
        turned = (lm - 130) @ R.T + 300
        A = FFHQ.transform(turned, 256)
        assert A[0, 0] == pytest.approx(A[1, 1]) and A[0, 1] == pytest.approx(-A[1, 0])
        inv = np.linalg.inv(np.vstack([A, [0, 0, 1]]))
        eyes = (inv @ np.c_[turned[:2], np.ones(2)].T)[:2].T
        assert eyes[0, 1] == pytest.approx(eyes[1, 1], abs=1e-6)  # level
        assert (eyes[0, 0] + eyes[1, 0]) / 2 == pytest.approx(128, abs=1e-6)  # centred


def test_every_generator_declares_its_crop(generator):
    from guide_engine.engine.models.nvlabs import NVlabsGenerator

    assert isinstance(generator.face_crop, TemplateCrop) and generator.face_crop.size == generator.resolution
    assert NVlabsGenerator.face_crop is FFHQ


def test_stored_template_is_what_the_detector_measures(generator, detector):
    """The DCGAN's template was measured on 512 samples; 48 other samples put every point within 1 px of it."""
    pts, found = measure_template(generator, detector, n=48, seed0=5_000_000)
    assert found >= 44
    assert np.abs(pts - np.asarray(FACE_TEMPLATE)).max() < 1.0


# -- photos in, the original face back -----------------------------------------------------------------------------
CASES = {
    "in a scene": dict(face_px=(150,), at=((0.7, 0.3),)),
    "small, low corner, turned": dict(face_px=(90,), at=((0.2, 0.8),), angles=(-10,)),
    "large, turned 15": dict(face_px=(320,), at=((0.5, 0.5),), angles=(15,)),
    "tight crop, PNG": dict(face_px=(64,), size=(64, 64), at=((0.5, 0.5),), quality=None),
    "tight crop, JPEG": dict(face_px=(128,), size=(128, 128), at=((0.5, 0.5),), quality=85),
    "EXIF orientation 6": dict(face_px=(200,), exif_orientation=6),
    "JPEG quality 40": dict(face_px=(120,), quality=40),
    "wide picture": dict(face_px=(110,), size=(900, 500), at=((0.8, 0.5),)),
    "16-bit greyscale": dict(face_px=(180,), mode="I;16", quality=None),
    "greyscale": dict(face_px=(180,), mode="L"),
    "palette": dict(face_px=(180,), mode="P", quality=None),
    "alpha": dict(face_px=(180,), mode="RGBA", quality=None),
    "CMYK": dict(face_px=(180,), mode="CMYK"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_aligned_crop_draws_the_original_face_back(case, generator, detector, judge, tmp_path):
    """The aligned crop is the same person as the face that was placed into the photo, to the judge: well under
    the strangers' p1 (0.564 on this generator). The whole-picture centre crop, what the engine did before, is
    not, for a face inside a scene."""
    face = generator_face(generator, SEED_A)
    path = compose([face], tmp_path / "photo", seed=3, **CASES[case])
    aligned = load_face(path, generator, detector)
    assert aligned.image.shape == (1, 3, 64, 64) and len(aligned.faces) == 1
    truth = as_tensor(face)
    if "grey" in case:
        truth = truth.mean(1, keepdim=True).expand(-1, 3, -1, -1)
        assert aligned.image.std() > 0.1  # a face, not a white square
        assert (aligned.image[:, 0] - aligned.image[:, 1]).abs().max() < 1e-6
    d = judge_dist(judge, aligned.image, truth)
    assert d < 0.35, d
    if case == "in a scene":
        assert judge_dist(judge, centre_crop(path, 64), truth) > 0.564


def test_two_faces_largest_first_and_face_k_chooses(generator, detector, judge, tmp_path):
    a, b = generator_face(generator, SEED_A), generator_face(generator, SEED_B)
    path = compose([a, b], tmp_path / "two.jpg", face_px=(160, 110), at=((0.7, 0.3), (0.25, 0.7)))
    first, second = load_face(path, generator, detector), load_face(path, generator, detector, face=1)
    assert len(first.faces) == 2 and first.chosen == 0 and second.chosen == 1
    assert first.faces[0].area > first.faces[1].area
    assert judge_dist(judge, first.image, as_tensor(a)) < judge_dist(judge, first.image, as_tensor(b))
    assert judge_dist(judge, second.image, as_tensor(b)) < judge_dist(judge, second.image, as_tensor(a))
    rec = second.record()
    assert rec["face"] == 1 and rec["faces_found"] == 2 and len(rec["landmarks"]) == 5 and 0.6 <= rec["score"] <= 1
    with pytest.raises(GuideEngineError, match="--face 2, but 2 faces found"):
        load_face(path, generator, detector, face=2)


def test_no_face_and_too_small_face_are_one_line_errors(generator, detector, tmp_path):
    with pytest.raises(GuideEngineError, match="no face found"):
        load_face(compose([], tmp_path / "none.jpg", face_px=(), at=()), generator, detector)
    small = compose([generator_face(generator, SEED_A)], tmp_path / "small.png", size=(128, 128), face_px=(24,),
                    at=((0.5, 0.5),), quality=None)
    with pytest.raises(GuideEngineError, match="too small to align"):
        load_face(small, generator, detector)


def png_header_only(path, width: int, height: int) -> None:
    """A PNG that claims width x height and holds almost nothing (a decompression bomb's header)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))


@pytest.mark.parametrize("make,msg", [
    (lambda p: png_header_only(p, 30000, 30000), "megapixels"),
    (lambda p: p.write_bytes(b"hello"), "not a readable image"),
    (lambda p: png_header_only(p, 40, 40), "not a readable image"),  # truncated pixel data
])
def test_unusable_files_are_refused_in_one_line(tmp_path, make, msg):
    p = tmp_path / "x.png"
    make(p)
    with pytest.raises(GuideEngineError, match=msg):
        read_photo(p)


def test_high_bit_depth_is_scaled_not_clipped(tmp_path):
    from PIL import Image

    ramp = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "g16.png")
    rgb = read_photo(tmp_path / "g16.png")
    assert rgb.shape == (64, 64, 3) and rgb.min() == 0 and rgb.max() == 255
    assert abs(rgb.mean() - 127.5) < 1.0  # before: 99.7% of the pixels were 255


def test_find_faces_sees_a_face_that_fills_the_frame(generator, detector):
    """The generator's own 64 px face touches the border: padding first lets the detector find it."""
    found = sum(bool(find_faces(generator_face(generator, s), detector)) for s in range(6000, 6012))
    assert found >= 11


def test_cli_refuses_a_decompression_bomb_in_one_line_also_in_a_folder(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from guide_engine.apps.cli import main

    monkeypatch.chdir(tmp_path)
    (tmp_path / "dir").mkdir()
    png_header_only(tmp_path / "dir" / "bomb.png", 30000, 30000)
    for args in (["--image", "dir/bomb.png"], ["--images", "dir"]):
        r = CliRunner().invoke(main, ["unlearn", *args, "--out", "run"])
        assert r.exit_code == 2 and "megapixels" in r.output and "Traceback" not in r.output, r.output
        assert len(r.output.strip().splitlines()) == 1 and not (tmp_path / "run").exists()
        assert not (tmp_path / "run.partial").exists()
