"""A pre-resized copy of a dataset in its official layout (`python -m shared.resize`).

Photos whose short side exceeds `--short-side` are shrunk to it (aspect kept, JPEG quality
95), the rest are copied as they are; bounding boxes (CUB's `bounding_boxes.txt`, the Dogs'
`Annotation/` XMLs) are scaled with their photo. Every task reads the copy through
`--data-root`, so a run at 224 px decodes a 256 px JPEG instead of a 500 px one. Only the
files the readers use are copied (not CUB's parts/ or attributes/, whose coordinates would
be wrong). A killed run resumes: finished photos are kept, and the metadata, written after
the photos, makes the copy a dataset only when every photo is in place.
"""

from __future__ import annotations

import json
import os
import shutil
import xml.etree.ElementTree as ET
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image

from shared.data import (
    CUB_FILES,
    DOGS_FILES,
    FOLDERS,
    default_workers,
    load_dataset,
    load_rgb,
    mat_list,
)
from shared.errors import DataError

IMAGE_FOLDERS = {"bird": "images", "dog": "Images"}


def resize_photo(source: Path, target: Path, short_side: int) -> tuple[float, float]:
    """Write `target` (atomically) unless an earlier run did; return the x and y scale
    applied to the photo."""
    with Image.open(source) as image:
        width, height = image.size
        fmt = image.format
    if target.exists():  # an interrupted run's work, kept if made with this --short-side
        with Image.open(target) as done:
            if min(done.size) == min(short_side, width, height):
                return done.width / width, done.height / height
    tmp = target.with_name(target.name + ".tmp")
    if min(width, height) <= short_side:
        shutil.copyfile(source, tmp)
        scale = (1.0, 1.0)
    else:
        image = load_rgb(source, need=("short", short_side))  # draft-mode decode first
        factor = short_side / min(width, height)
        size = (max(1, round(width * factor)), max(1, round(height * factor)))
        image.resize(size, Image.Resampling.LANCZOS, reducing_gap=3.0).save(
            tmp, "PNG" if fmt == "PNG" else "JPEG", quality=95)
        scale = (size[0] / width, size[1] / height)
    os.replace(tmp, target)
    return scale


def _copy_atomic(source: Path, target: Path) -> None:
    shutil.copyfile(source, target.with_name(target.name + ".tmp"))
    os.replace(target.with_name(target.name + ".tmp"), target)


def resize_dataset(name: str, data_root, out, short_side: int) -> Path:
    """Write the resized copy to `<out>/<CUB_200_2011|StanfordDogs>`; return that folder."""
    if short_side < 16:
        raise DataError(f"--short-side {short_side}: expected at least 16 pixels")
    index = load_dataset(name, data_root)
    folder = Path(out) / FOLDERS[name]
    if folder.resolve() == index.folder.resolve():
        raise DataError(f"--out {out} is the dataset itself; choose another folder")
    records = index.train + index.test
    images = folder / IMAGE_FOLDERS[name]
    for parent in {(images / r.key).parent for r in records}:
        parent.mkdir(parents=True, exist_ok=True)

    with ThreadPoolExecutor(default_workers()) as pool:  # PIL works without the GIL
        scales = dict(zip((r.key for r in records), pool.map(
            lambda r: resize_photo(r.path, images / r.key, short_side), records), strict=True))
    (_write_cub_metadata if name == "bird" else _write_dogs_metadata)(index.folder, folder,
                                                                      scales)
    (folder / "resized.json").write_text(json.dumps(
        {"source": str(index.folder), "short_side": short_side, "images": len(records),
         "shrunk": sum(s != (1.0, 1.0) for s in scales.values())}, indent=1))
    load_dataset(name, out)  # the copy must read as the dataset it copies
    return folder


def _write_cub_metadata(source: Path, folder: Path, scales: dict) -> None:
    boxes = source / "bounding_boxes.txt"
    if boxes.exists():
        key_of = dict(line.split(maxsplit=1) for line in
                      (source / "images.txt").read_text().splitlines() if line.strip())
        lines = []
        for line in boxes.read_text().splitlines():
            if line.strip():
                image_id, *xywh = line.split()
                sx, sy = scales[key_of[image_id].strip()]
                x, y, w, h = map(float, xywh)
                lines.append(f"{image_id} {x * sx:.2f} {y * sy:.2f} {w * sx:.2f} {h * sy:.2f}")
        (folder / "bounding_boxes.txt").write_text("\n".join(lines) + "\n")
    for file in CUB_FILES:  # the copy reads as a dataset once the last of these is in place
        if file != "images":
            _copy_atomic(source / file, folder / file)


def _write_dogs_metadata(source: Path, folder: Path, scales: dict) -> None:
    if (source / "Annotation").is_dir():
        for split in ("train", "test"):
            for file, annotation, _ in mat_list(source / f"{split}_list.mat"):
                target = folder / "Annotation" / annotation
                target.parent.mkdir(parents=True, exist_ok=True)
                _scale_voc(source / "Annotation" / annotation, target, *scales[file])
    for file in DOGS_FILES:
        if file != "Images":
            _copy_atomic(source / file, folder / file)


def _scale_voc(source: Path, target: Path, sx: float, sy: float) -> None:
    tree = ET.parse(source)
    for tag, scale in (("width", sx), ("height", sy)):
        for size in tree.getroot().iter(tag):
            size.text = str(round(float(size.text) * scale))
    for box in tree.getroot().iter("bndbox"):
        for tag, scale in (("xmin", sx), ("ymin", sy), ("xmax", sx), ("ymax", sy)):
            node = box.find(tag)
            node.text = str(round(float(node.text) * scale))
    tree.write(target)


def main(argv=None) -> None:
    import argparse
    import sys

    from shared.cli import DATASETS

    parser = argparse.ArgumentParser(prog="python -m shared.resize", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", choices=DATASETS, required=True)
    parser.add_argument("--data-root", default="data")
    parser.add_argument("--short-side", type=int, required=True,
                        help="shrink photos whose short side is longer than this")
    parser.add_argument("--out", required=True, help="data root of the copy")
    args = parser.parse_args(argv)
    try:
        folder = resize_dataset(args.dataset, args.data_root, args.out, args.short_side)
    except DataError as e:
        sys.exit(f"error: {e}")
    print(json.dumps(json.loads((folder / "resized.json").read_text())))


if __name__ == "__main__":
    main()
