"""CUB-200-2011 and Stanford Dogs on their official layouts: readers, the validation split,
image loading, transforms and loaders.

    python -m shared.data summary  --dataset bird --data-root data [--val-fraction 0.1] [--verify]

Getting the data (`shared.download`) and a pre-resized copy (`shared.resize`) have their own
commands; this module imports neither.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import random
import sys
import time
import xml.etree.ElementTree as ET
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageFile
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from shared.cli import CPU_EVAL_BATCH_SIZE, DATASETS, RESIZE_MODES, fraction, pick
from shared.errors import DataError

FOLDERS = {"bird": "CUB_200_2011", "dog": "StanfordDogs"}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CUB_FILES = ("images.txt", "image_class_labels.txt", "train_test_split.txt", "classes.txt",
             "images")
DOGS_FILES = ("train_list.mat", "test_list.mat", "Images")

# A truncated JPEG must fail loudly, naming the file, never load half grey.
ImageFile.LOAD_TRUNCATED_IMAGES = False


Box = tuple[float, float, float, float]  # x0, y0, x1, y1 in pixels of the original image
Need = tuple[str, float]  # what a transform needs of an image: see decode_need


@dataclass(frozen=True)
class Record:
    key: str  # the image's path as the metadata lists it, relative to the image folder
    path: Path
    label: int  # 0..K-1
    boxes: tuple[Box, ...] = ()
    crop: Box | None = None  # when set, the loader sees only this region (task 3)
    image_id: str = ""  # the dataset's own key: CUB's images.txt id, the Dogs file path


@dataclass
class DatasetIndex:
    name: str  # "bird" or "dog"
    folder: Path
    classes: list[str]  # class names in label order
    train: list[Record]
    test: list[Record]


# --------------------------------------------------------------------------------- readers


def dataset_folder(name: str, data_root: str | os.PathLike) -> Path:
    """`<data_root>/CUB_200_2011` or `<data_root>/StanfordDogs`; the folder itself also works."""
    if name not in FOLDERS:
        raise DataError(f"unknown dataset {name!r}: expected one of {', '.join(DATASETS)}")
    root = Path(data_root)
    folder = root / FOLDERS[name]
    if not folder.is_dir() and root.name == FOLDERS[name]:
        folder = root
    expected = CUB_FILES if name == "bird" else DOGS_FILES
    missing = [f for f in expected if not (folder / f).exists()]
    if missing:
        raise DataError(
            f"{folder} is not a {FOLDERS[name]} folder in the official layout: missing "
            f"{', '.join(missing)} (expected {', '.join(expected)}). Get it with: "
            f"python -m shared.download --dataset {name} --data-root {root}"
        )
    return folder


def load_dataset(name: str, data_root: str | os.PathLike) -> DatasetIndex:
    folder = dataset_folder(name, data_root)
    if name == "bird":
        return _every_class_trains(read_cub(folder), folder / "classes.txt")
    return _every_class_trains(read_dogs(folder), folder / "train_list.mat")


def _read_table(path: Path, fields: str, types: tuple) -> dict:
    """A metadata file of whitespace-separated rows, keyed by its first column (an id);
    `fields` spells the expected line for error messages."""
    table = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            parts = line.strip().split(maxsplit=len(types) - 1)
            try:
                if len(parts) != len(types):
                    raise ValueError
                key, *values = (t(p) for t, p in zip(types, parts, strict=True))
            except ValueError:
                raise DataError(
                    f"{path}, line {lineno}: expected '{fields}', got {line.rstrip()!r}"
                ) from None
            if key in table:
                raise DataError(f"{path}, line {lineno}: id {key} is listed twice")
            table[key] = values[0] if len(values) == 1 else tuple(values)
    return table


def _split_flag(value: str) -> int:
    if value not in ("0", "1"):
        raise ValueError(value)
    return int(value)


def read_cub(folder: Path) -> DatasetIndex:
    """CUB-200-2011: labels follow `classes.txt` order, so class ids with gaps work;
    `bounding_boxes.txt` is optional."""
    folder = Path(folder)
    files = {n: folder / n for n in CUB_FILES}
    class_ids = _read_table(files["classes.txt"], "<class_id> <class_name>", (int, str))
    label_of = {cid: i for i, cid in enumerate(class_ids)}
    paths = _read_table(files["images.txt"], "<image_id> <path>", (int, str))
    _no_repeated_paths(files["images.txt"], paths)
    labels = _read_table(files["image_class_labels.txt"], "<image_id> <class_id>", (int, int))
    is_train = _read_table(files["train_test_split.txt"],
                           "<image_id> <is_training_image: 1 or 0>", (int, _split_flag))
    boxes: dict[int, tuple] = {}
    box_file = folder / "bounding_boxes.txt"
    if box_file.exists():
        for image_id, (x, y, w, h) in _read_table(
                box_file, "<image_id> <x> <y> <width> <height>",
                (int, float, float, float, float)).items():
            if w <= 0 or h <= 0:
                raise DataError(f"{box_file}: image {image_id} has a box of size {w}x{h}")
            boxes[image_id] = ((x, y, x + w, y + h),)

    train, test = [], []
    for image_id, key in paths.items():
        for table, file in ((labels, "image_class_labels.txt"),
                            (is_train, "train_test_split.txt")):
            if image_id not in table:
                raise DataError(f"{files[file]}: no line for image {image_id} ({key})")
        if labels[image_id] not in label_of:
            raise DataError(f"{files['image_class_labels.txt']}: image {image_id} has class "
                            f"{labels[image_id]}, which {files['classes.txt']} does not list")
        record = Record(key, _existing(folder / "images" / key), label_of[labels[image_id]],
                        boxes.get(image_id, ()), image_id=str(image_id))
        (train if is_train[image_id] else test).append(record)
    return DatasetIndex("bird", folder, list(class_ids.values()), train, test)


def _no_repeated_paths(path: Path, paths: dict[int, str]) -> None:
    """One photo listed under two image ids would sit in two splits or count twice."""
    first_id: dict[str, int] = {}
    for image_id, key in paths.items():
        if key in first_id:
            lines = {}
            with open(path, encoding="utf-8") as f:
                for lineno, line in enumerate(f, 1):
                    parts = line.split(maxsplit=1)
                    if parts and parts[0] in (str(first_id[key]), str(image_id)):
                        lines.setdefault(parts[0], lineno)
            raise DataError(f"{path}, lines {lines.get(str(first_id[key]))} and "
                            f"{lines.get(str(image_id))}: {key} is listed twice (image ids "
                            f"{first_id[key]} and {image_id})")
        first_id[key] = image_id


def _every_class_trains(index: DatasetIndex, source: Path) -> DatasetIndex:
    """A class without training photos would be a head output no image teaches."""
    counts = np.bincount([r.label for r in index.train], minlength=len(index.classes))
    empty = [name for name, n in zip(index.classes, counts, strict=True) if n == 0]
    if empty:
        raise DataError(f"{source}: {len(empty)} class(es) have no training photos: "
                        f"{', '.join(empty[:5])}; remove them or add their photos")
    return index


def mat_list(path: Path) -> list[tuple[str, str, int]]:
    """(file, annotation, 1-based label) rows of an official `*_list.mat`."""
    import scipy.io  # half a second to import: Stanford Dogs only

    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises several types for a damaged file
        raise DataError(f"{path}: cannot read the MATLAB list ({e})") from None
    missing = [k for k in ("file_list", "annotation_list", "labels") if k not in mat]
    if missing:
        raise DataError(f"{path}: missing variable(s) {', '.join(missing)}; expected the cells "
                        "file_list and annotation_list and the array labels")
    files, annotations = (
        [str(np.asarray(cell).ravel()[0]) for cell in mat[k].ravel()]
        for k in ("file_list", "annotation_list"))
    labels = [int(v) for v in np.asarray(mat["labels"]).ravel()]
    if not len(files) == len(annotations) == len(labels):
        raise DataError(f"{path}: file_list, annotation_list and labels differ in length "
                        f"({len(files)}, {len(annotations)}, {len(labels)})")
    return list(zip(files, annotations, labels, strict=True))


def _voc_boxes(path: Path) -> tuple[Box, ...]:
    """Every <object>'s box of a VOC-style XML annotation (some photos hold several dogs)."""
    if not path.is_file():
        raise DataError(f"{path}: annotation file is missing")
    try:
        objects = ET.parse(path).getroot().iter("object")
        return tuple(
            tuple(float(obj.find(f"bndbox/{tag}").text) for tag in ("xmin", "ymin", "xmax", "ymax"))
            for obj in objects)
    except (ET.ParseError, AttributeError, TypeError, ValueError) as e:
        raise DataError(f"{path}: not a VOC annotation with <object><bndbox> "
                        f"xmin/ymin/xmax/ymax ({e})") from None


def read_dogs(folder: Path) -> DatasetIndex:
    """Stanford Dogs: labels follow the sorted breed folders; boxes from `Annotation/` when the
    folder is there."""
    folder = Path(folder)
    splits = {s: mat_list(folder / f"{s}_list.mat") for s in ("train", "test")}
    breeds = sorted({file.split("/")[0] for rows in splits.values() for file, _, _ in rows})
    label_of = {breed: i for i, breed in enumerate(breeds)}
    mat_label_of: dict[str, int] = {}
    annotations = folder / "Annotation"
    records: dict[str, list[Record]] = {}
    for split, rows in splits.items():
        records[split] = []
        for file, annotation, mat_label in rows:
            breed = file.split("/")[0]
            # The official 1-based labels follow the same breed order; a mismatch means the
            # lists and the folders disagree, and we would train on wrong labels.
            if mat_label_of.setdefault(breed, mat_label) != mat_label:
                raise DataError(f"{folder / f'{split}_list.mat'}: {file} has label {mat_label}, "
                                f"other images of {breed} have {mat_label_of[breed]}")
            boxes = _voc_boxes(annotations / annotation) if annotations.is_dir() else ()
            records[split].append(
                Record(file, _existing(folder / "Images" / file), label_of[breed], boxes,
                       image_id=file))
    if len(set(mat_label_of.values())) != len(breeds):
        raise DataError(f"{folder}: the .mat labels do not give each breed folder its own label")
    return DatasetIndex("dog", folder, breeds, records["train"], records["test"])


def _existing(path: Path) -> Path:
    if not path.is_file():
        raise DataError(f"{path}: listed image file is missing")
    return path


# ---------------------------------------------------------------------------------- splits


def split_train_val(records: list[Record], val_fraction: float, seed: int = 0
                    ) -> tuple[list[Record], list[Record]]:
    """Seeded, stratified validation split carved from train (never from test). Each class
    gives round(n * val_fraction) images, at least one when val_fraction > 0 (else 4 photos
    a class at 0.1 would leave validation empty), and keeps at least one for training."""
    if not 0 <= val_fraction < 1:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    by_class = defaultdict(list)
    for i, record in enumerate(records):
        by_class[record.label].append(i)
    rng = np.random.default_rng(seed)
    val = set()
    for label in sorted(by_class):
        members = by_class[label]
        n_val = round(len(members) * val_fraction)
        n_val = min(max(n_val, 1 if val_fraction > 0 else 0), len(members) - 1)
        val.update(rng.permutation(members)[:n_val].tolist())
    return ([r for i, r in enumerate(records) if i not in val],
            [r for i, r in enumerate(records) if i in val])


def check_images(records: list[Record], cache: Path | None = None) -> None:
    """Every listed photo decodes whole, before a run spends hours and meets a bad one in
    the middle of an epoch: a missing or unreadable file, a photo whose body is cut off
    (its header alone reads fine), one over PIL's decompression-bomb size. JPEGs decode at
    1/8 scale (libjpeg still reads every byte of the body). With `cache` (a JSON file), the
    photos found whole are remembered by size and mtime, so a repeat run checks only what
    changed."""
    verified = _read_verified(cache)

    def stamp(record: Record) -> list[int]:
        status = _status(record.path)
        return [status.st_size, status.st_mtime_ns]

    def check(record: Record) -> tuple[Record, int]:
        try:
            with Image.open(record.path) as image:
                pixels = image.width * image.height
                if not Image.MAX_IMAGE_PIXELS or pixels <= Image.MAX_IMAGE_PIXELS:
                    image.draft(None, (image.width // 8, image.height // 8))
                    image.load()
                return record, pixels
        except FileNotFoundError:
            raise DataError(f"{record.path}: image file is missing") from None
        except (OSError, SyntaxError, ValueError) as e:
            raise DataError(f"{record.path}: cannot read the image ({e})") from None
        except Image.DecompressionBombError:
            return record, Image.MAX_IMAGE_PIXELS + 1

    stamps = {str(r.path): stamp(r) for r in records}
    unchecked = [r for r in records if verified.get(str(r.path)) != stamps[str(r.path)]]
    with ThreadPoolExecutor(default_workers()) as pool:  # PIL decodes without the GIL
        for record, pixels in pool.map(check, unchecked):
            if Image.MAX_IMAGE_PIXELS and pixels > Image.MAX_IMAGE_PIXELS:
                raise DataError(f"{record.path}: {pixels} pixels, over PIL's "
                                f"decompression-bomb limit of {Image.MAX_IMAGE_PIXELS}; shrink "
                                "it (python -m shared.resize) or remove it")
    if cache is not None and unchecked:
        _write_verified(cache, verified | stamps)


def _status(path: Path) -> os.stat_result:
    try:
        return path.stat()
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None


def verified_cache(folder: Path) -> Path:
    """Where `check_images` remembers the photos of a dataset folder it found whole:
    $FGVC_CACHE (default ~/.cache/fgvc), one file per folder."""
    digest = hashlib.sha1(str(Path(folder).resolve()).encode()).hexdigest()[:16]
    return cache_root() / f"verified-{digest}.json"


def cache_root() -> Path:
    """$FGVC_CACHE, default ~/.cache/fgvc: the photo check's and the decoded cache's."""
    return Path(os.environ.get("FGVC_CACHE") or Path.home() / ".cache" / "fgvc")


def _read_verified(cache: Path | None) -> dict:
    try:
        return json.loads(cache.read_text()) if cache is not None else {}
    except (OSError, ValueError):  # none yet, or damaged: check every photo again
        return {}


def _write_verified(cache: Path, verified: dict) -> None:
    try:
        cache.parent.mkdir(parents=True, exist_ok=True)
        tmp = cache.with_name(f"{cache.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(verified))
        os.replace(tmp, cache)
    except OSError:  # a read-only home: the next run checks again, nothing else lost
        pass


# A sample of the test split (--limit, task 6's --images, task 7's --test-images) is drawn
# with this seed, not --seed: runs with different seeds are scored on the same photos, so
# that a row's seeds pool (shared.results.seed_group).
TEST_SAMPLE_SEED = 0


def limit_per_split(records: list[Record], limit: int | None, seed: int = 0) -> list[Record]:
    """At most `limit` records, a seeded sample in the original order (for smoke runs)."""
    if limit is None or limit >= len(records):
        return records
    keep = set(np.random.default_rng(seed).permutation(len(records))[:limit].tolist())
    return [r for i, r in enumerate(records) if i in keep]


# ---------------------------------------------------------------------------------- images


def load_rgb(path: str | os.PathLike, region: Box | None = None,
             need: Need | None = None) -> Image.Image:
    """Decode an image as RGB, whatever its mode or its bytes' format (grayscale, CMYK,
    palette, PNG behind a .jpg name), cropped to `region` (pixels of the full image, clipped
    to it) when given. With `need` (`decode_need`), a JPEG at least twice the size the
    transform needs decodes at 1/2, 1/4 or 1/8 scale (libjpeg's draft mode: 1.5-2.3x the
    images/s from 1600 x 1200 photos, docs/speed.md), never below that size. 16-bit
    grayscale becomes 8-bit (value / 257). The EXIF orientation tag is ignored, as
    torchvision's readers ignore it: pixels stay as stored, which is the frame CUB's and
    Stanford Dogs' boxes are given in. Errors name the file."""
    image, full_size = decode_rgb(path, lambda width, height: draft_factor_for(
        (width, height), region, need))
    return crop_decoded(image, full_size, region)


def decode_rgb(path: str | os.PathLike, factor_for=None, header_only: bool = False
               ) -> tuple[Image.Image | None, tuple[int, int]]:
    """The whole photo as RGB, decoded at 1 / `factor_for(width, height)` scale (a JPEG's
    draft mode; 1 = full size), and the photo's full size (`load_rgb`). `header_only`:
    (None, the size), nothing decoded."""
    try:
        with Image.open(path) as image:
            full_size = image.size
            if header_only:
                return None, full_size
            factor = factor_for(*full_size) if factor_for is not None else 1
            if factor > 1:
                image.draft(None, (full_size[0] // factor, full_size[1] // factor))
            image.load()
            if image.mode in ("P", "PA"):  # palette transparency must go through RGBA
                image = image.convert("RGBA")
            if image.mode.startswith("I"):  # 16-bit PNGs: convert("RGB") would clip to white
                image = _eight_bit(image, path)
            elif image.mode == "F":
                raise DataError(f"{path}: a floating-point image (mode F); expected 8- or "
                                "16-bit pixels")
            if image.mode != "RGB":  # convert would copy an RGB image: 1/6 of its read time
                image = image.convert("RGB")
    except FileNotFoundError:
        raise DataError(f"{path}: image file is missing") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read the image ({e})") from None
    return image, full_size


def _clipped(region: Box, full_size: tuple[int, int]) -> Box:
    x0, y0, x1, y1 = region
    return max(x0, 0), max(y0, 0), min(x1, full_size[0]), min(y1, full_size[1])


def draft_factor_for(full_size: tuple[int, int], region: Box | None, need: Need | None) -> int:
    """The draft-mode scale-down `load_rgb` decodes a photo of `full_size` at, for the part
    of it that is seen (`region`, else all of it)."""
    if need is None:
        return 1
    if region is None:
        return draft_factor(*full_size, need)
    x0, y0, x1, y1 = _clipped(region, full_size)
    return draft_factor(x1 - x0, y1 - y0, need)


def crop_decoded(image: Image.Image, full_size: tuple[int, int], region: Box | None
                 ) -> Image.Image:
    """`region` (pixels of the full photo, clipped to it) of a photo decoded at any scale."""
    if region is None:
        return image
    scale = image.width / full_size[0]  # < 1 after a draft-mode decode
    # PIL rounds each edge; a box under a pixel wide (an untrained detector's) keeps one
    left, top, right, bottom = (round(v * scale) for v in _clipped(region, full_size))
    left, top = min(left, image.width - 1), min(top, image.height - 1)
    return image.crop((left, top, max(right, left + 1), max(bottom, top + 1)))


class DecodedCache:
    """Decoded photos kept on disk as raw uint8 RGB and read back memory-mapped, so that no
    table, run or epoch decodes the same JPEG twice (docs/speed.md). A photo is stored at
    each draft-mode scale a run has asked for (`draft_factor_for`: one per image size and
    geometry), exactly as `load_rgb` decodes it, and decoded again when its size or mtime
    changes. One store under $FGVC_CACHE/decoded (default ~/.cache/fgvc), shared by every
    dataset, run and process: an append-only pixel file and a JSON index, written under a
    lock. FGVC_DECODED_CACHE=off turns it off."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.index: dict = {}
        self.pixels_name = None
        self._pixels = None  # the memory map, opened in each process on first read

    @staticmethod
    def enabled() -> bool:
        return os.environ.get("FGVC_DECODED_CACHE", "on").lower() not in ("off", "0", "no")

    @classmethod
    def default(cls) -> DecodedCache:
        return cls(cache_root() / "decoded")

    def prepare(self, records: list[Record], need: Need | None) -> DecodedCache:
        """Decode and store what these records need that the store lacks or holds stale."""
        import fcntl

        self.folder.mkdir(parents=True, exist_ok=True)
        with open(self.folder / "lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)  # other runs, DDP ranks: one writer at a time
            index = self._read_index()
            wanted = {}  # (path, factor) -> record
            for record in records:
                path = str(record.path)
                status = _status(record.path)
                entry = index["photos"].get(path)
                if entry is None or entry["stamp"] != [status.st_size, status.st_mtime_ns]:
                    size = decode_rgb(path, None, header_only=True)[1]
                    entry = index["photos"][path] = {
                        "stamp": [status.st_size, status.st_mtime_ns], "size": size,
                        "decodes": {}}
                factor = draft_factor_for(tuple(entry["size"]), record.crop, need)
                if str(factor) not in entry["decodes"]:
                    wanted[path, factor] = record
            if wanted:
                self._store(index, list(wanted))
        self.index, self.pixels_name = index["photos"], index["pixels"]
        self._pixels = None
        return self

    def _read_index(self) -> dict:
        try:
            index = json.loads((self.folder / "index.json").read_text())
            if (self.folder / index["pixels"]).stat().st_size >= index["end"]:
                return index
        except (OSError, ValueError, KeyError):
            pass  # none yet, or damaged: a new pixel file (readers may still map the old)
        return {"pixels": f"pixels-{os.getpid()}-{time.time_ns()}.u8", "end": 0, "photos": {}}

    def _store(self, index: dict, wanted: list[tuple[str, int]]) -> None:
        def decode(path_factor):
            path, factor = path_factor
            image, _ = decode_rgb(path, lambda width, height: factor)
            return path, factor, np.asarray(image)

        with open(self.folder / index["pixels"], "ab") as pixels, \
                ThreadPoolExecutor(default_workers()) as pool:  # PIL decodes without the GIL
            pixels.truncate(index["end"])  # drop what a killed writer left past the index
            for path, factor, array in pool.map(decode, wanted):
                pixels.write(array.tobytes())
                index["photos"][path]["decodes"][str(factor)] = [index["end"], *array.shape[:2]]
                index["end"] += array.nbytes
        tmp = self.folder / f"index.json.{os.getpid()}.tmp"
        tmp.write_text(json.dumps(index))
        os.replace(tmp, self.folder / "index.json")

    def load(self, record: Record, need: Need | None) -> Image.Image:
        """What `load_rgb(record.path, record.crop, need)` gives, from the store."""
        entry = self.index[str(record.path)]
        full_size = tuple(entry["size"])
        offset, height, width = entry["decodes"][str(draft_factor_for(full_size, record.crop,
                                                                      need))]
        if self._pixels is None:
            self._pixels = np.memmap(self.folder / self.pixels_name, np.uint8, "r")
        pixels = self._pixels[offset:offset + height * width * 3].reshape(height, width, 3)
        return crop_decoded(Image.fromarray(pixels), full_size, record.crop)

    def __getstate__(self) -> dict:  # a spawned loader worker maps the file itself
        return {**self.__dict__, "_pixels": None}


def _eight_bit(image: Image.Image, path) -> Image.Image:
    """A 16-bit grayscale image (modes I;16*, or I holding 16-bit values) as 8-bit L, each
    value divided by 257 (65535 -> 255), as a 16-bit viewer shows it."""
    pixels = np.asarray(image).astype(np.int64)
    if pixels.min() < 0 or pixels.max() > 65535:
        raise DataError(f"{path}: {image.mode} pixels outside 0..65535; expected an 8- or "
                        "16-bit image")
    return Image.fromarray(np.round(pixels / 257).astype(np.uint8))  # 2-D uint8: mode L


def decode_need(train: bool, image_size: int, resize_mode: str = "letterbox", *,
                crop_scale: tuple[float, float] = (0.25, 1.0), crop_ratio: float = 0.875
                ) -> Need:
    """What `build_transform` with the same arguments needs of the image it gets, so that
    decoding smaller changes no output pixel's source resolution: the letterbox's long side;
    the center crop's resized short side; for random-resized crops, the side of a square of
    the image's area at which even the smallest crop (area `crop_scale[0]`, aspect 3/4)
    still has `image_size` pixels on its short side."""
    if resize_mode == "letterbox":
        return "long", image_size
    if train and resize_mode == "random-resized-crop":
        return "area", image_size / math.sqrt(crop_scale[0] * 3 / 4)
    return "short", image_size / crop_ratio


def draft_factor(width: int, height: int, need: Need) -> int:
    """The largest JPEG scale-down (1, 2, 4 or 8) that keeps an image of this size >= need."""
    kind, pixels = need
    side = {"long": max(width, height), "short": min(width, height),
            "area": math.sqrt(width * height)}[kind]
    factor = 1
    while factor < 8 and side / (2 * factor) >= pixels:
        factor *= 2
    return factor


def letterbox_geometry(width: int, height: int, size: int) -> tuple[int, int, int, int]:
    """Where a `width` x `height` photo lands in its `size` x `size` letterbox: the resized
    width and height and the left and top padding (`Letterbox`, ImageOps.pad's geometry)."""
    scale = size / max(width, height)
    new_width, new_height = round(width * scale), round(height * scale)
    return new_width, new_height, round((size - new_width) / 2), round((size - new_height) / 2)


def box_to_letterbox(box: Box, width: int, height: int, size: int) -> Box:
    """A box in the photo's pixels -> the same box in its letterbox frame's pixels."""
    new_width, new_height, left, top = letterbox_geometry(width, height, size)
    sx, sy = new_width / width, new_height / height
    x0, y0, x1, y1 = box
    return x0 * sx + left, y0 * sy + top, x1 * sx + left, y1 * sy + top


def box_from_letterbox(box: Box, width: int, height: int, size: int) -> Box:
    """A box in the letterbox frame's pixels -> the photo's pixels, clipped to the photo (a
    box reaching into the padding ends at the photo's edge)."""
    new_width, new_height, left, top = letterbox_geometry(width, height, size)
    sx, sy = new_width / width, new_height / height
    x0, y0, x1, y1 = box
    return (min(max((x0 - left) / sx, 0.0), width), min(max((y0 - top) / sy, 0.0), height),
            min(max((x1 - left) / sx, 0.0), width), min(max((y1 - top) / sy, 0.0), height))


class Letterbox:
    """Resize uint8 pixels (3, H, W) keeping the aspect ratio so the long side is `size`, then
    pad with black to a centred square (the seed's transform; `letterbox_geometry`)."""

    def __init__(self, size: int):
        self.size = size

    def __call__(self, pixels: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms.v2 import functional as F

        height, width = pixels.shape[-2:]
        new_width, new_height, left, top = letterbox_geometry(width, height, self.size)
        resized = F.resize(pixels, [new_height, new_width], antialias=True)
        return F.pad(resized, [left, top, self.size - new_width - left,
                               self.size - new_height - top])

    def __repr__(self) -> str:
        return f"Letterbox(size={self.size})"


def build_transform(train: bool, image_size: int, resize_mode: str = "letterbox", *,
                    hflip: float = 0.5, grayscale: float = 0.1,
                    crop_scale: tuple[float, float] = (0.25, 1.0), crop_ratio: float = 0.875,
                    normalization: tuple | None = None):
    """PIL image -> uint8 pixels (3, H, W), which `normalize` turns into the model's input
    once the batch is on its device: workers, collation, pinning and the copy then move a
    quarter of the bytes, and workers do no float work. With `normalization` = (mean, std):
    the normalised float tensor itself (for single images outside a loader). Training
    augments (the seed: random grayscale, flip, letterbox); evaluation is deterministic:
    letterbox, or resize + center crop. The pixels become a tensor first: torch's uint8
    resizing is faster than Pillow's (bench/data_speed.py)."""
    from torchvision.transforms import v2 as T  # 3 s to import: not for the summary command

    if resize_mode not in RESIZE_MODES:
        raise ValueError(f"resize_mode must be one of {RESIZE_MODES}, got {resize_mode!r}")
    center_crop = [T.Resize(round(image_size / crop_ratio)), T.CenterCrop(image_size)]
    if resize_mode == "letterbox":
        geometry = [Letterbox(image_size)]
    elif train and resize_mode == "random-resized-crop":
        geometry = [T.RandomResizedCrop(image_size, scale=crop_scale)]
    else:
        geometry = center_crop
    augment = []
    if train and grayscale > 0:
        augment.append(T.RandomGrayscale(grayscale))
    if train and hflip > 0:
        augment.append(T.RandomHorizontalFlip(hflip))
    to_float = ([] if normalization is None else
                [T.ToDtype(torch.float32, scale=True), T.Normalize(*normalization)])
    return T.Compose([T.PILToTensor(), *geometry, *augment, *to_float])


def normalize(pixels: torch.Tensor, mean=IMAGENET_MEAN, std=IMAGENET_STD) -> torch.Tensor:
    """uint8 pixels (N, 3, H, W), a loader's batch on its device -> the model's float input
    ((x / 255 - mean) / std), in the pixels' memory format."""
    shift, scale = _shift_scale(tuple(mean), tuple(std), pixels.device)
    return pixels.float().sub_(shift).div_(scale)


@functools.lru_cache
def _shift_scale(mean: tuple, std: tuple, device: torch.device):
    """255 x mean and std as (1, 3, 1, 1) tensors on the device, made once: a new tensor a
    batch would be a blocking host-to-device copy on the training loop's path."""
    return tuple(255 * torch.tensor(v, device=device).view(1, 3, 1, 1) for v in (mean, std))


class ImageDataset(Dataset):
    """(image tensor, label) for a list of records, cropped to `record.crop` where set
    (clipped to the image); JPEGs decode at reduced scale where `need` allows (`load_rgb`),
    once: the pixels are kept in the `DecodedCache` (unless `decoded_cache` is False or
    FGVC_DECODED_CACHE=off). An index may come with a seed from `AugmentSeedSampler`; the
    transform's randomness is then drawn from that seed alone, and so is whether a record
    with a crop shows its whole photo instead (with probability `whole_share`: both views
    for task 3's test-time refine)."""

    def __init__(self, records: list[Record], transform, need: Need | None = None,
                 whole_share: float = 0.0, decoded_cache: bool | None = None):
        self.records, self.transform, self.need = records, transform, need
        self.whole_share = whole_share
        use_cache = DecodedCache.enabled() if decoded_cache is None else decoded_cache
        self.decoded = None
        if use_cache and records:
            views = records + [replace(r, crop=None) for r in records
                               if r.crop is not None and whole_share > 0]
            try:
                self.decoded = DecodedCache.default().prepare(views, need)
            except OSError as e:  # a read-only or full disk: decode every time instead
                print(f"warning: no decoded cache ({e}); photos are decoded each time they "
                      "are read", file=sys.stderr)

    def __len__(self) -> int:
        return len(self.records)

    def load(self, record: Record) -> Image.Image:
        if self.decoded is not None:
            return self.decoded.load(record, self.need)
        return load_rgb(record.path, record.crop, self.need)

    def __getitem__(self, item):
        index, seed = item if isinstance(item, tuple) else (item, None)
        record = self.records[index]
        if (seed is not None and record.crop is not None
                and random.Random(seed).random() < self.whole_share):
            record = replace(record, crop=None)
        image = self.load(record)
        if seed is None:
            return self.transform(image), record.label
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return self.transform(image), record.label


# --------------------------------------------------------------------------------- loaders


def dist_rank_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


class AugmentSeedSampler(Sampler):
    """The training order: a DistributedSampler shard (the whole set in one process),
    reshuffled by `set_epoch`. Each index comes paired with a seed made from (seed, epoch,
    index), so the augmented images do not depend on the worker count, on persistent workers
    or on a resume."""

    def __init__(self, dataset: Dataset, seed: int, rank: int = 0, world_size: int = 1):
        self.order = DistributedSampler(dataset, num_replicas=world_size, rank=rank,
                                        shuffle=True, seed=seed)
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.order.set_epoch(epoch)

    def __len__(self) -> int:
        return len(self.order)

    def __iter__(self):
        for index in self.order:
            yield index, hash((self.seed, self.epoch, index)) % 2**63


class ShardSampler(Sampler):
    """Evaluation order: rank r takes images r, r + W, ...; no padding, so across processes
    every image is counted exactly once."""

    def __init__(self, size: int, rank: int = 0, world_size: int = 1):
        self.indices = range(rank, size, world_size)

    def __len__(self) -> int:
        return len(self.indices)

    def __iter__(self):
        return iter(self.indices)


def make_loader(dataset: Dataset, batch_size: int, *, train: bool, workers: int = 0,
                seed: int = 0, pin_memory: bool = False) -> DataLoader:
    """Training: shuffled, seeded augmentation, last partial batch dropped (batch norm).
    Evaluation: in order, each image once across DDP processes. Call
    `loader.sampler.set_epoch(epoch)` before each training epoch."""
    rank, world = dist_rank_world()
    sampler = (AugmentSeedSampler(dataset, seed, rank, world) if train
               else ShardSampler(len(dataset), rank, world))
    return DataLoader(
        dataset, batch_size, sampler=sampler, num_workers=workers,
        persistent_workers=workers > 0, pin_memory=pin_memory,
        drop_last=train and len(sampler) >= batch_size,
        # the loader's own generator: creating an iterator must not draw from the global RNG
        generator=torch.Generator().manual_seed(seed),
    )


@dataclass
class Loaders:
    train: DataLoader
    val: DataLoader | None  # None with --val-fraction 0: the last epoch's weights are kept
    test: DataLoader


def prepare_splits(dataset: str, data_root: str | os.PathLike, val_fraction: float = 0.1,
                   seed: int = 0, limit: int | None = None
                   ) -> tuple[DatasetIndex, list[Record], list[Record], list[Record]]:
    """The dataset, then train / val (carved from train) / test, each capped by `limit` (the
    test split's sample the same for every `seed`); every photo of the three is checked to
    decode (`check_images`) before anything trains."""
    index = load_dataset(dataset, data_root)
    train, val = split_train_val(index.train, val_fraction, seed)
    train, val = (limit_per_split(r, limit, seed) for r in (train, val))
    test = limit_per_split(index.test, limit, TEST_SAMPLE_SEED)
    check_images(train + val + test, verified_cache(index.folder))
    return index, train, val, test


@dataclass(frozen=True)
class LoaderConfig:
    """How a classifier's loaders show the images (the common flags of the same names,
    with their defaults): size, geometry, augmentation, batch, loader processes, seed."""
    image_size: int = 512
    resize_mode: str = "letterbox"
    crop_scale: float = 0.25
    crop_ratio: float = 0.875
    hflip: float = 0.5
    grayscale: float = 0.1
    batch_size: int = 16  # global: split across DDP processes
    eval_batch_size: int | None = None  # None: batch_size (at most 16 on a CPU)
    workers: int | None = None  # None: `loader_workers` decides
    seed: int = 0

    @classmethod
    def from_flags(cls, flags: dict) -> LoaderConfig:
        """The fields of the same names from a script's flags (`vars(args)`)."""
        return pick(cls, flags)

    def eval_batch(self, cuda: bool) -> int:
        """Images an evaluation pass takes at once (global): --eval-batch-size, else
        --batch-size, at most `CPU_EVAL_BATCH_SIZE` on a CPU (larger is slower there)."""
        return self.eval_batch_size or (self.batch_size if cuda
                                        else min(self.batch_size, CPU_EVAL_BATCH_SIZE))


def make_loaders(train: list[Record], val: list[Record], test: list[Record],
                 config: LoaderConfig, cuda: bool = False, whole_share: float = 0.0
                 ) -> Loaders:
    """Loaders of uint8 pixels (`normalize` them on the device) for the three splits;
    the batch size is global, so each DDP process takes its share. `whole_share`: the
    chance a cropped training record shows its whole photo (`ImageDataset`)."""
    _, world = dist_rank_world()
    workers = loader_workers(config.workers, cuda)
    if config.batch_size % world:
        raise DataError(f"--batch-size {config.batch_size} does not split over {world} "
                        "processes")
    batch = config.batch_size // world
    eval_batch = max(1, config.eval_batch(cuda) // world)

    def loader(records, is_train):
        geometry = {"crop_scale": (config.crop_scale, 1.0), "crop_ratio": config.crop_ratio}
        transform = build_transform(is_train, config.image_size, config.resize_mode,
                                    hflip=config.hflip, grayscale=config.grayscale,
                                    **geometry)
        need = decode_need(is_train, config.image_size, config.resize_mode, **geometry)
        dataset = ImageDataset(records, transform, need, whole_share if is_train else 0.0)
        return make_loader(dataset, batch if is_train else eval_batch, train=is_train,
                           workers=workers, seed=config.seed, pin_memory=cuda)

    return Loaders(loader(train, True), loader(val, False) if val else None,
                   loader(test, False))


def default_workers() -> int:
    """This process's share of the machine's cores (torchrun starts one process a GPU)."""
    local_processes = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    return max(1, len(os.sched_getaffinity(0)) // local_processes)


def loader_workers(workers: int | None, cuda: bool) -> int:
    """`workers` (--workers), else a worker a core on CUDA and 0 on CPU. A GPU eats images
    faster than the seed's fixed 8 workers decode them (ViT-B/16 trains at 2,604 img/s at 224
    px on an H200; 8 workers loaded 2,893 there, 1.11x that, 16 workers 4,353, 1.67x:
    docs/speed.md); CPU training needs every core for the model (on 2 cores, loading in
    the main process trained lite0 at 16.4 img/s, one worker process at 13.6)."""
    if workers is not None:
        return workers
    return default_workers() if cuda else 0


# ------------------------------------------------------------------------- command line


def summary(name: str, data_root, val_fraction: float = 0.1, seed: int = 0,
            verify: bool = False) -> dict:
    index = load_dataset(name, data_root)
    train, val = split_train_val(index.train, val_fraction, seed)
    if verify:
        records = index.train + index.test
        pool = ThreadPoolExecutor(default_workers())  # PIL decodes without holding the GIL
        try:
            for _ in pool.map(lambda r: load_rgb(r.path).close(), records):
                pass
        finally:
            pool.shutdown(cancel_futures=True)  # stop at the first unreadable image
    return {
        "dataset": name, "folder": str(index.folder), "classes": len(index.classes),
        "train": len(train), "val": len(val), "test": len(index.test),
        "boxes": sum(bool(r.boxes) for r in index.train + index.test),
        "val_fraction": val_fraction, "verified": verify,
    }


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    cmd = commands.add_parser("summary", help="image counts of a dataset as one JSON object")
    cmd.add_argument("--dataset", choices=DATASETS, required=True)
    cmd.add_argument("--data-root", default="data")
    cmd.add_argument("--val-fraction", type=fraction, default=0.1)
    cmd.add_argument("--seed", type=int, default=0)
    cmd.add_argument("--verify", action="store_true",
                     help="open every image; fail on the first unreadable one")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(summary(args.dataset, args.data_root, args.val_fraction, args.seed,
                                 args.verify)))
    except DataError as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
