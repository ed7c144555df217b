"""Data pipeline: decoded + augmented images/s of one loader process, side by side in one run,
on JPEG photos of the real datasets' typical size (500 x 375) and of their large tail (1600
x 1200, a quarter as many), for the seed's training transform (letterbox 512, random
grayscale, flip), the recipes' and the evaluation's. Columns: the photo read and transformed
as the seed (and this toolkit until the speed issue) did, `Image.open(path).convert("RGB")`
and Pillow geometry ending in normalised floats; ours (`shared.data.load_rgb`, torch's uint8
resizing, uint8 pixels out: `shared.data.build_transform`) decoding the whole JPEG, in
libjpeg's draft mode where the transform allows (`shared.data.decode_need`), from a copy
pre-resized to a short side of 256 (`python -m shared.resize`), and from the decoded cache
(the loaders' default: the draft decode stored once, read memory-mapped;
`shared.data.DecodedCache`, here in a temporary folder). One process is what a worker gives,
so the loader's rate is about this times `--workers`; the last table checks that with a real
DataLoader (pinned memory where CUDA is, as the engine's). `--epoch-images` sets the
DataLoader's epoch (the photos repeated): an epoch of a few batches a worker times the
workers' start of the epoch and its uneven end more than their pace (CUB's training split is
5,994 images, 187 batches).

    python bench/data_speed.py [--images 200] [--repeats 2] [--loader-workers 0 1 2]
    python bench/data_speed.py --loader-only --images 800 --epoch-images 5994 \
        --loader-workers 8 16   # on a GPU machine: does the loader keep up?
"""

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np
import torch
from PIL import Image, ImageOps

from shared.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageDataset,
    Record,
    build_transform,
    decode_need,
    make_loader,
)
from shared.resize import resize_photo


def recipe(train, size, mode, scale=0.25, ratio=0.875, grayscale=0.0) -> dict:
    return {"train": train, "image_size": size, "resize_mode": mode,
            "crop_scale": (scale, 1.0), "crop_ratio": ratio, "grayscale": grayscale}


PIPELINES = {
    "seed: letterbox 512, grayscale 0.1, flip": recipe(True, 512, "letterbox", grayscale=0.1),
    "strong recipe: random-resized crop 448 (area 0.5-1), flip": recipe(
        True, 448, "random-resized-crop", 0.5, 1.0),
    "evaluation: letterbox 512": recipe(False, 512, "letterbox"),
    "vit recipe: random-resized crop 224 (area 0.35-1), flip": recipe(
        True, 224, "random-resized-crop", 0.35),
    "evaluation: resize 256, center crop 224": recipe(False, 224, "center-crop"),
    "demo: letterbox 128": recipe(True, 128, "letterbox"),
}
LOADER_PIPELINES = ("vit recipe: random-resized crop 224 (area 0.35-1), flip",
                    "strong recipe: random-resized crop 448 (area 0.5-1), flip")


def pillow_transform(train, image_size, resize_mode, crop_scale, crop_ratio, grayscale):
    """The same transform as the seed wrote it: Pillow, then normalised floats."""
    from torchvision import transforms as T

    if resize_mode == "letterbox":
        geometry = [lambda image: ImageOps.pad(image, (image_size, image_size),
                                               Image.Resampling.BILINEAR)]
    elif train and resize_mode == "random-resized-crop":
        geometry = [T.RandomResizedCrop(image_size, scale=crop_scale)]
    else:
        geometry = [T.Resize(round(image_size / crop_ratio)), T.CenterCrop(image_size)]
    augment = ([T.RandomGrayscale(grayscale)] if train and grayscale else []) + (
        [T.RandomHorizontalFlip()] if train else [])
    return T.Compose([*geometry, *augment, T.ToTensor(),
                      T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])


class SeedWayDataset(ImageDataset):
    """Reads as the seed did: `Image.open(path).convert("RGB")`, a full decode and a copy."""

    def __init__(self, records: list[Record], transform):
        super().__init__(records, transform, decoded_cache=False)

    def load(self, record: Record) -> Image.Image:
        return Image.open(record.path).convert("RGB")


def need_of(settings: dict):
    return decode_need(**{k: v for k, v in settings.items() if k != "grayscale"})


def photos(folder: Path, count: int, size: tuple[int, int]) -> list[Record]:
    """Noisy JPEGs (quality 90) with smooth structure: real photos' file size and decode
    cost."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True)
    records = []
    for i in range(count):
        base = rng.uniform(0, 255, (size[1] // 8, size[0] // 8, 3)).astype(np.uint8)
        image = Image.fromarray(base).resize(size, Image.Resampling.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 12, (*size[::-1], 3))
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        records.append(Record(path.name, path, 0))
    return records


def rate(datasets: list[ImageDataset], repeats: int, rounds: int = 3) -> list[float]:
    """images/s of each dataset, best of `rounds` interleaved rounds (a noisy neighbour on a
    shared machine slows one round, not one column)."""
    best = [0.0] * len(datasets)
    for dataset in datasets:
        dataset[0]  # warm-up (imports, first allocation)
    for _ in range(rounds):
        for i, dataset in enumerate(datasets):
            torch.manual_seed(0)  # the same random crops for every column
            start = time.perf_counter()
            for _ in range(repeats):
                for item in range(len(dataset)):
                    dataset[item]
            best[i] = max(best[i], len(dataset) * repeats / (time.perf_counter() - start))
    return best


def loader_rate(dataset: ImageDataset, workers: int, repeats: int) -> float:
    loader = make_loader(dataset, 32, train=True, workers=workers,
                         pin_memory=torch.cuda.is_available())

    def images_of_epoch(epoch: int) -> int:
        loader.sampler.set_epoch(epoch)
        return sum(len(images) for images, _ in loader)

    # An untimed epoch starts the workers, then `repeats` timed ones, each used up before the
    # next begins, as in training. (A new iterator while batches are in flight first waits
    # for them and throws them away; a clock started at the first batch would miss the
    # other workers' head start.)
    images_of_epoch(0)
    start = time.perf_counter()
    count = sum(images_of_epoch(epoch) for epoch in range(1, repeats + 1))
    return count / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--loader-workers", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--epoch-images", type=int,
                        help="images in a DataLoader epoch, the photos repeated (default: "
                             "--images)")
    parser.add_argument("--loader-only", action="store_true",
                        help="only the DataLoader table (a quick check of a machine)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    with tempfile.TemporaryDirectory() as tmp:
        os.environ["FGVC_CACHE"] = str(Path(tmp, "cache"))  # the decoded cache's store
        sets = {(500, 375): photos(Path(tmp, "500"), args.images, (500, 375))}
        if not args.loader_only:  # the large tail is for the per-process table
            sets[1600, 1200] = photos(Path(tmp, "1600"), args.images // 4, (1600, 1200))
        resized = []
        for record in sets[500, 375]:
            target = Path(tmp, "r256", record.key)
            target.parent.mkdir(exist_ok=True)
            resize_photo(record.path, target, 256)
            resized.append(Record(record.key, target, 0))
        if not args.loader_only:
            print("images/s of one process, best of 3 rounds\n\n| pipeline | photos | seed's "
                  "way: Pillow, floats | ours: full decode | ours: draft decode (default) | "
                  "ours: pre-resized to 256 | ours: decoded cache (default) |\n"
                  "|---|---|---|---|---|---|---|")
            for name, settings in PIPELINES.items():
                transform, need = build_transform(**settings), need_of(settings)
                for (w, h), records in sets.items():
                    datasets = [SeedWayDataset(records, pillow_transform(**settings)),
                                ImageDataset(records, transform, decoded_cache=False),
                                ImageDataset(records, transform, need, decoded_cache=False)]
                    if settings["image_size"] <= 224 and w == 500:
                        datasets.append(ImageDataset(resized, transform, need,
                                                     decoded_cache=False))
                    speeds = [f"{speed:.1f}" for speed in rate(datasets, args.repeats)]
                    speeds += [""] * (4 - len(speeds))  # no pre-resized copy for this row
                    cached = ImageDataset(records, transform, need, decoded_cache=True)
                    speeds.append(f"{rate([cached], args.repeats)[0]:.1f}")
                    print(f"| {name} | {w} x {h} | {' | '.join(speeds)} |", flush=True)
        # (pipeline, photos, transform): the seed's way against the default, from the photos
        # and, at 224 px, from the 256 px copy
        columns = [(name, source, way) for name in LOADER_PIPELINES
                   for source, way in (("500 x 375", "seed's way"), ("500 x 375", "ours"),
                                        *([("pre-resized to 256", "ours")]
                                          if PIPELINES[name]["image_size"] <= 224 else []))]
        epoch_images = args.epoch_images or args.images
        print(f"\nDataLoader images/s, batch 32, epochs of {epoch_images} images: the seed's "
              "way (Pillow, normalised floats) or ours (uint8 pixels, normalised on the "
              "device)\n\n| workers | "
              + " | ".join(f"{name.split(':')[0]} {PIPELINES[name]['image_size']}, {source}: "
                           f"{way}" for name, source, way in columns)
              + " |\n|---|" + "---|" * len(columns))
        for workers in args.loader_workers:
            cells = []
            for name, source, way in columns:
                settings = PIPELINES[name]
                records = resized if source == "pre-resized to 256" else sets[500, 375]
                records = [records[i % len(records)] for i in range(epoch_images)]
                dataset = (SeedWayDataset(records, pillow_transform(**settings))
                           if way == "seed's way" else
                           ImageDataset(records, build_transform(**settings), need_of(settings),
                                        decoded_cache=False))
                cells.append(f"{loader_rate(dataset, workers, args.repeats):.1f}")
            print(f"| {workers} | {' | '.join(cells)} |", flush=True)


if __name__ == "__main__":
    main()
