"""The boxes file that detect.py writes and train.py reads, crop regions, and how good the
predicted boxes are (CorLoc, mean IoU).

A boxes file is JSON: {"dataset", "folder", "detector": {...}, "detector_train_keys": [...],
"boxes": {image key: {"box": [x0, y0, x1, y1], "score": s} or null when nothing was found}}.
Image keys are the paths the dataset's metadata lists (relative to its image folder).
"""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path

from shared.data import Box, Record
from shared.errors import DataError

Detection = tuple[Box, float] | None  # the top box and its score, or None: nothing found


def write_boxes(path: Path, dataset: str, folder: Path, detector: dict,
                train_keys: list[str], predictions: dict[str, Detection]) -> None:
    boxes = {key: None if p is None else {"box": [round(v, 2) for v in p[0]],
                                          "score": round(p[1], 4)}
             for key, p in sorted(predictions.items())}
    document = {"dataset": dataset, "folder": str(folder), "detector": detector,
                "detector_train_keys": sorted(train_keys), "boxes": boxes}
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(document, indent=1) + "\n")
    os.replace(tmp, path)


def read_boxes(path: Path, dataset: str, records: list[Record]) -> tuple[dict, set[str]]:
    """Predicted boxes for `records` (key -> Detection) and the keys the detector trained on.
    A file for another dataset, or one that lacks some of the images, is an error naming
    what does not match."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"boxes file {path} not found: write it with "
                        f"python task3_crop/detect.py --dataset {dataset}, or pass --boxes PATH")
    try:
        document = json.loads(path.read_text())
        found, boxes = document["dataset"], document["boxes"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise DataError(f"{path} is not a boxes file written by task3_crop/detect.py ({e})"
                        ) from None
    if found != dataset:
        raise DataError(f"{path} holds boxes for --dataset {found}, not {dataset}")
    missing = [r.key for r in records if r.key not in boxes]
    if missing:
        raise DataError(f"{path} has no box for {len(missing)} of {len(records)} images of "
                        f"{dataset}, e.g. {', '.join(missing[:3])}: it was written for "
                        "another copy or subset of the dataset; rerun detect.py on this one")
    detections = {}
    for r in records:
        entry = boxes[r.key]
        detections[r.key] = None if entry is None else (tuple(entry["box"]), entry["score"])
    return detections, set(document.get("detector_train_keys", ()))


def localiser_name(path: Path) -> str:
    """What wrote a boxes file: "centre (area 0.5)", "CAM (threshold 0.2)" or the
    detector's name."""
    found = json.loads(Path(path).read_text()).get("detector", {})
    if found.get("localiser") == "centre":
        return f"centre (area {found['centre_area']:g})"
    if found.get("localiser") == "cam":
        return f"CAM (threshold {found['cam_threshold']:g})"
    return f"detector ({found.get('detector', '?')})"


def largest(boxes: tuple[Box, ...]) -> Box:
    """The main subject among several true boxes (Stanford Dogs photos may hold several)."""
    return max(boxes, key=lambda b: (b[2] - b[0]) * (b[3] - b[1]))


def crop_region(box: Box, mode: str, margin: float) -> Box:
    """`box`: the box grown by `margin` of its size on every side. `square`: a square of the
    grown box's longer side, centred on it. The loader clips the region to the image."""
    x0, y0, x1, y1 = box
    w, h = x1 - x0, y1 - y0
    x0, y0, x1, y1 = x0 - margin * w, y0 - margin * h, x1 + margin * w, y1 + margin * h
    if mode == "square":
        side = max(x1 - x0, y1 - y0)
        cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
        x0, y0, x1, y1 = cx - side / 2, cy - side / 2, cx + side / 2, cy + side / 2
    return x0, y0, x1, y1


def with_crops(records: list[Record], source: str, detections: dict | None, mode: str,
               margin: float) -> tuple[list[Record], int]:
    """Records cropped around their true (`source="gt"`) or predicted (`"pred"`) box.
    Images without a detection keep the whole image; their count is returned."""
    if mode == "none":
        return records, 0
    cropped, whole = [], 0
    for r in records:
        if source == "gt":
            if not r.boxes:
                raise DataError(f"{r.path} has no true box (CUB: bounding_boxes.txt; Dogs: "
                                "Annotation/): gt crops need the dataset's boxes")
            box = largest(r.boxes)
        else:
            detection = detections[r.key]
            box = None if detection is None else detection[0]
        whole += box is None
        cropped.append(r if box is None else replace(r, crop=crop_region(box, mode, margin)))
    return cropped, whole


def iou(a: Box, b: Box) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def localisation(records: list[Record], detections: dict) -> dict:
    """CorLoc: the share of images whose top box overlaps a true box with IoU >= 0.5;
    mean IoU of the top box with its best-matching true box. An image with no detection
    counts as a miss with IoU 0 (and in `no_detection`)."""
    scored = [r for r in records if r.boxes]
    if not scored:
        return {"detector_corloc": None, "detector_miou": None, "no_detection": None}
    best = [0.0 if detections[r.key] is None else
            max(iou(detections[r.key][0], true) for true in r.boxes) for r in scored]
    return {"detector_corloc": sum(v >= 0.5 for v in best) / len(best),
            "detector_miou": sum(best) / len(best),
            "no_detection": sum(detections[r.key] is None for r in records)}


def at_setting(boxes: dict, setting) -> dict:
    """A swept localiser's boxes (image key -> {setting: box}) at one setting, as detections."""
    return {key: (per_setting[setting], 1.0) for key, per_setting in boxes.items()}


def corloc_at(records: list[Record], boxes: dict, setting) -> float | None:
    return localisation(records, at_setting(boxes, setting))["detector_corloc"]


def choose_setting(val: list[Record], boxes: dict, candidates, given, default):
    """(setting, how it was chosen): the `given` one, else the candidate with the best
    validation CorLoc where validation has true boxes (the first of equals), else `default`.
    Never the test split."""
    if given is not None:
        return given, "given"
    if any(r.boxes for r in val):
        return max(candidates, key=lambda v: corloc_at(val, boxes, v)), "validation CorLoc"
    return default, "default: no validation boxes"


def max_box_acc(records: list[Record], boxes: dict, candidates) -> float | None:
    """MaxBoxAcc (Choe et al. 2020): the best CorLoc over the candidate settings, a measure
    of the maps free of any one threshold; None without true boxes."""
    found = [corloc_at(records, boxes, v) for v in candidates]
    return None if found[0] is None else max(found)
