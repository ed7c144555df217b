"""A small generated dataset in exactly the official CUB-200-2011 and Stanford Dogs layouts.

    python -m shared.sample_data --out DIR [--classes N] [--per-class M] [--size S] [--seed 0]

writes DIR/CUB_200_2011 (metadata files, boxes) and DIR/StanfordDogs (.mat lists as MATLAB
cells, VOC-style XML without extension). Every "animal" has the same body plan and a random
body colour; classes differ only in a small marking (its colour, pattern and eye colour), the
point of fine-grained data. The animal fills part of the frame at a random place and its true
box is written; some dog photos hold two dogs; about one photo in ten is grayscale.
Deterministic for a given seed. Tests and `run_all.sh --demo` use it.
"""

from __future__ import annotations

import argparse
import io
import math
from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image, ImageDraw

MARK_COLOURS = {"Crimson": (200, 30, 40), "Azure": (40, 110, 230), "Golden": (240, 190, 20),
                "Jade": (20, 170, 90), "Violet": (150, 60, 200), "Ivory": (245, 240, 225)}
PATTERNS = ("Spotted", "Barred", "Striped", "Ringed")
EYE_COLOURS = ((20, 20, 20), (230, 120, 0), (0, 200, 220))
DOG_WNID = 2085620  # the first real breed id (n02085620-Chihuahua); ours count up from it
OBJECT_SCALE = (0.3, 0.5)  # the body's width as a share of the photo's


def class_names(n: int) -> list[str]:
    colours = list(MARK_COLOURS)
    per_eye = len(colours) * len(PATTERNS)
    if n > per_eye * len(EYE_COLOURS):
        raise ValueError(f"at most {per_eye * len(EYE_COLOURS)} classes can be generated")
    return [f"{colours[c % len(colours)]}_{PATTERNS[c // len(colours) % len(PATTERNS)]}"
            f"{'' if c < per_eye else f'_Eye{c // per_eye}'}" for c in range(n)]


def _background(rng: np.random.Generator, width: int, height: int) -> Image.Image:
    """A smooth two-colour gradient with noise and a few leafy blobs: clutter to ignore."""
    a, b = rng.uniform(40, 220, 3), rng.uniform(40, 220, 3)
    t = np.linspace(0, 1, width)[None, :, None] * np.ones((height, 1, 1))
    pixels = a * (1 - t) + b * t + rng.normal(0, 12, (height, width, 3))
    image = Image.fromarray(pixels.clip(0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for _ in range(rng.integers(2, 6)):
        x, y = rng.uniform(0, width), rng.uniform(0, height)
        r = rng.uniform(0.03, 0.1) * width
        draw.ellipse((x - r, y - r / 2, x + r, y + r / 2),
                     fill=tuple(int(v) for v in rng.uniform((20, 80, 20), (90, 160, 90))))
    return image


def _draw_animal(draw: ImageDraw.ImageDraw, rng: np.random.Generator, label: int,
                 width: int, height: int, scale: tuple[float, float] = OBJECT_SCALE
                 ) -> tuple[float, float, float, float]:
    """Body, head and the class's marking at a random place; returns the box (x, y, w, h).
    The body's width is a `scale` share (drawn uniformly from the range) of the photo's."""
    body_w = rng.uniform(*scale) * width
    body_h = body_w * rng.uniform(0.55, 0.8)
    head_r = body_h * 0.35
    box_w, box_h = body_w + head_r, body_h + head_r / 2  # the head juts out at one end
    x0 = rng.uniform(0, width - box_w)
    y0 = rng.uniform(0, height - box_h)
    facing_left = rng.random() < 0.5
    bx0 = x0 + head_r if facing_left else x0
    by0 = y0 + head_r / 2
    body = tuple(int(v) for v in rng.uniform((90, 70, 50), (170, 150, 130)))  # plumage / fur
    draw.ellipse((bx0, by0, bx0 + body_w, by0 + body_h), fill=body)
    hx = x0 + head_r if facing_left else x0 + box_w - head_r
    hy = y0 + head_r
    draw.ellipse((hx - head_r, hy - head_r, hx + head_r, hy + head_r), fill=body)

    colours = list(MARK_COLOURS.values())
    colour = colours[label % len(colours)]
    pattern = PATTERNS[label // len(colours) % len(PATTERNS)]
    eye = EYE_COLOURS[label // (len(colours) * len(PATTERNS))]
    er = max(head_r * 0.25, 1)
    draw.ellipse((hx - er, hy - er, hx + er, hy + er), fill=eye)
    # The marking: a patch in the middle of the body, a third of its size.
    cx, cy = bx0 + body_w / 2, by0 + body_h / 2
    r = body_h / 3
    line = max(int(r / 3), 1)
    if pattern == "Spotted":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
    elif pattern == "Ringed":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), outline=colour, width=line)
    else:
        for k in (-1, 0, 1):
            if pattern == "Barred":  # vertical bars
                draw.line((cx + k * r * 0.8, cy - r, cx + k * r * 0.8, cy + r), colour, line)
            else:  # horizontal stripes
                draw.line((cx - r, cy + k * r * 0.8, cx + r, cy + k * r * 0.8), colour, line)
    return x0, y0, box_w, box_h


def _photo(rng: np.random.Generator, label: int, size: int, animals: int = 1,
           scale: tuple[float, float] = OBJECT_SCALE
           ) -> tuple[Image.Image, list[tuple[float, float, float, float]]]:
    width, height = [(size, size * 3 // 4), (size * 3 // 4, size), (size, size)][rng.integers(3)]
    image = _background(rng, width, height)
    draw = ImageDraw.Draw(image)
    boxes = [_draw_animal(draw, rng, label, width, height, scale) for _ in range(animals)]
    if rng.random() < 0.1:
        image = image.convert("L")  # real sets hold a few grayscale photos
    return image, boxes


def _train_mask(rng: np.random.Generator, n: int) -> np.ndarray:
    """About half of each class for training, chosen at random (as in CUB)."""
    mask = np.zeros(n, dtype=bool)
    mask[rng.permutation(n)[: math.ceil(n / 2)]] = True
    return mask


def write_cub(out: Path, classes: int, per_class: int, size: int, seed: int,
              scale: tuple[float, float] = OBJECT_SCALE) -> dict:
    """CUB_200_2011/: images/<NNN.Name>/<file>.jpg and the five metadata files."""
    rng = np.random.default_rng([seed, 0])
    folder = Path(out) / "CUB_200_2011"
    names = [f"{c + 1:03d}.{name}" for c, name in enumerate(class_names(classes))]
    lines = {f: [] for f in ("images", "image_class_labels", "train_test_split",
                             "bounding_boxes")}
    manifest = []
    image_id = 0
    for label, class_dir in enumerate(names):
        (folder / "images" / class_dir).mkdir(parents=True, exist_ok=True)
        for k, is_train in enumerate(_train_mask(rng, per_class)):
            image_id += 1
            image, (box,) = _photo(rng, label, size, 1, scale)
            key = f"{class_dir}/{class_dir[4:]}_{k + 1:04d}_{image_id}.jpg"
            image.save(folder / "images" / key, quality=90)
            lines["images"].append(f"{image_id} {key}")
            lines["image_class_labels"].append(f"{image_id} {label + 1}")
            lines["train_test_split"].append(f"{image_id} {int(is_train)}")
            lines["bounding_boxes"].append(f"{image_id} " + " ".join(f"{v:.1f}" for v in box))
            x, y, w, h = (round(v, 1) for v in box)
            manifest.append({"key": key, "label": label, "train": bool(is_train),
                             "boxes": [(x, y, x + w, y + h)]})
    lines["classes"] = [f"{c + 1} {name}" for c, name in enumerate(names)]
    for file, rows in lines.items():
        (folder / f"{file}.txt").write_text("\n".join(rows) + "\n")
    return {"folder": folder, "classes": names, "images": manifest}


VOC_OBJECT = """\t<object>
\t\t<name>{breed}</name>
\t\t<pose>Unspecified</pose>
\t\t<truncated>0</truncated>
\t\t<difficult>0</difficult>
\t\t<bndbox>
\t\t\t<xmin>{0}</xmin>
\t\t\t<ymin>{1}</ymin>
\t\t\t<xmax>{2}</xmax>
\t\t\t<ymax>{3}</ymax>
\t\t</bndbox>
\t</object>
"""


def _voc_xml(wnid: str, stem: str, image: Image.Image, breed: str, boxes: list) -> str:
    objects = "".join(VOC_OBJECT.format(*box, breed=breed) for box in boxes)
    return (f"<annotation>\n\t<folder>{wnid[1:]}</folder>\n\t<filename>{stem}</filename>\n"
            "\t<source>\n\t\t<database>ImageNet database</database>\n\t</source>\n"
            f"\t<size>\n\t\t<width>{image.width}</width>\n\t\t<height>{image.height}</height>\n"
            f"\t\t<depth>{len(image.getbands())}</depth>\n\t</size>\n"
            f"\t<segment>0</segment>\n{objects}</annotation>")


MAT_HEADER = b"MATLAB 5.0 MAT-file, Platform: posix, Created by: shared.sample_data".ljust(116)


def _cells(strings: list[str]) -> np.ndarray:
    """An N x 1 MATLAB cell array of strings, as in the official lists."""
    cells = np.empty((len(strings), 1), dtype=object)
    cells[:, 0] = strings
    return cells


def write_dogs(out: Path, classes: int, per_class: int, size: int, seed: int,
               scale: tuple[float, float] = OBJECT_SCALE) -> dict:
    """StanfordDogs/: Images/<wnid-Breed>/<wnid_N>.jpg, Annotation/<wnid-Breed>/<wnid_N> (XML),
    train_list.mat, test_list.mat, file_list.mat."""
    rng = np.random.default_rng([seed, 1])
    folder = Path(out) / "StanfordDogs"
    names = [f"n{DOG_WNID + c:08d}-{name}" for c, name in enumerate(class_names(classes))]
    lists = {"train": [], "test": []}
    manifest = []
    for label, breed_dir in enumerate(names):
        wnid = breed_dir.split("-")[0]
        for sub in ("Images", "Annotation"):
            (folder / sub / breed_dir).mkdir(parents=True, exist_ok=True)
        for k, is_train in enumerate(_train_mask(rng, per_class)):
            animals = 2 if rng.random() < 0.2 else 1  # some photos hold several dogs
            image, boxes = _photo(rng, label, size, animals, scale)
            stem = f"{wnid}_{1000 + k}"
            image.save(folder / "Images" / breed_dir / f"{stem}.jpg", quality=90)
            # VOC boxes are whole pixels: xmin, ymin, xmax, ymax
            voc = [(int(x), int(y), int(x + w), int(y + h)) for x, y, w, h in boxes]
            xml = _voc_xml(wnid, stem, image, breed_dir.split("-", 1)[1], voc)
            (folder / "Annotation" / breed_dir / stem).write_text(xml)
            lists["train" if is_train else "test"].append(
                (f"{breed_dir}/{stem}.jpg", f"{breed_dir}/{stem}", label + 1))
            manifest.append({"key": f"{breed_dir}/{stem}.jpg", "label": label,
                             "train": bool(is_train), "boxes": [tuple(map(float, b)) for b in voc]})
    lists["file"] = lists["train"] + lists["test"]
    for split, rows in lists.items():
        files, annotations, labels = zip(*rows, strict=True)
        buffer = io.BytesIO()
        scipy.io.savemat(buffer, {
            "file_list": _cells(list(files)), "annotation_list": _cells(list(annotations)),
            "labels": np.array(labels, dtype=np.uint8).reshape(-1, 1)})
        # The 116-byte text header carries a timestamp; a fixed one keeps the output
        # byte-identical for a given seed.
        (folder / f"{split}_list.mat").write_bytes(MAT_HEADER + buffer.getvalue()[116:])
    return {"folder": folder, "classes": names, "images": manifest}


def write_sample_data(out, classes: int = 6, per_class: int = 12, size: int = 96,
                      seed: int = 0, object_scale: tuple[float, float] = OBJECT_SCALE) -> dict:
    """Both datasets under `out`; returns what was written, per dataset, for checks."""
    if classes < 1 or per_class < 2 or size < 32:
        raise ValueError("need classes >= 1, per_class >= 2 and size >= 32")
    low, high = object_scale
    if not 0.05 <= low <= high <= 0.6:
        raise ValueError(f"object scale {low} {high}: need 0.05 <= low <= high <= 0.6")
    return {"bird": write_cub(Path(out), classes, per_class, size, seed, object_scale),
            "dog": write_dogs(Path(out), classes, per_class, size, seed, object_scale)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.sample_data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True, help="folder to write both datasets into")
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--per-class", type=int, default=12, help="images per class")
    parser.add_argument("--size", type=int, default=96, help="long side of each photo")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--object-scale", type=float, nargs=2, default=OBJECT_SCALE,
                        metavar=("LOW", "HIGH"),
                        help="the animal's body width as a share of the photo's, drawn "
                             "uniformly from [LOW, HIGH] (small objects: 0.1 0.15)")
    args = parser.parse_args(argv)
    try:
        written = write_sample_data(args.out, args.classes, args.per_class, args.size, args.seed,
                                    tuple(args.object_scale))
    except ValueError as e:
        parser.error(str(e))
    for name, info in written.items():
        print(f"{name}: {len(info['images'])} images in {len(info['classes'])} classes "
              f"-> {info['folder']}")


if __name__ == "__main__":
    main()
