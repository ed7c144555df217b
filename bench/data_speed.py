"""Data pipeline: decoded + augmented images/s of one loader process, on JPEG photos of the
real datasets' typical size (500 x 375), for the seed's training transform (letterbox 512,
random grayscale, flip) and ours (the strong recipe's random-resized crop 448 and flip; the
evaluation letterbox), side by side in one run. One process is what a worker gives, so the
loader's rate is about this times `--workers`.

    python bench/data_speed.py [--images 200] [--repeats 2]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402

from shared.data import ImageDataset, Record, build_transform  # noqa: E402


def photos(folder: Path, count: int) -> list[Record]:
    """Noisy 500 x 375 JPEGs (quality 90): real photos' size, file size and decode cost."""
    rng = np.random.default_rng(0)
    records = []
    for i in range(count):
        base = rng.uniform(0, 255, (47, 63, 3)).astype(np.uint8)  # smooth structure
        image = Image.fromarray(base).resize((500, 375), Image.Resampling.BICUBIC)
        noisy = np.asarray(image, dtype=np.int16) + rng.integers(-12, 12, (375, 500, 3))
        path = folder / f"{i:04d}.jpg"
        Image.fromarray(noisy.clip(0, 255).astype(np.uint8)).save(path, quality=90)
        records.append(Record(path.name, path, 0))
    return records


def rate(records: list[Record], transform, repeats: int) -> float:
    dataset = ImageDataset(records, transform)
    dataset[0]  # warm-up (imports, first allocation)
    start = time.perf_counter()
    for _ in range(repeats):
        for i in range(len(dataset)):
            dataset[i]
    return len(dataset) * repeats / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker
    pipelines = {
        "seed: letterbox 512, grayscale 0.1, flip": build_transform(True, 512, "letterbox"),
        "ours strong: random-resized crop 448, flip": build_transform(
            True, 448, "random-resized-crop", grayscale=0.0, crop_scale=(0.5, 1.0),
            crop_ratio=1.0),
        "evaluation: letterbox 512": build_transform(False, 512, "letterbox"),
        "evaluation: letterbox 224": build_transform(False, 224, "letterbox"),
    }
    with tempfile.TemporaryDirectory() as folder:
        records = photos(Path(folder), args.images)
        print("| pipeline | images/s, one process |\n|---|---|")
        for name, transform in pipelines.items():
            print(f"| {name} | {rate(records, transform, args.repeats):.1f} |", flush=True)


if __name__ == "__main__":
    main()
