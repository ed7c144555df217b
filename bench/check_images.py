"""What the pre-flight photo check costs (`shared.data.check_images`): every photo of a
dataset decoded before the first epoch, so that one cut off after its header stops the run
at once, naming it, instead of in the middle of epoch 1. Side by side in one run: the old
header-only check, the full check (JPEGs at 1/8 scale), and the full check again with its
cache of verified photos (a repeat run: size and mtime only).

    python bench/check_images.py --data-root ../shared/data/cub100-real
    python bench/check_images.py --data-root ../shared/data/cub100-real --generated 11788

--generated N also times N photos at CUB's typical 500 x 375, made from the data's photos
(resized and repeated) in a temporary folder: the size of the full CUB-200-2011.
"""

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from PIL import Image

from shared import data
from shared.results import cpu_name


def header_only(records) -> None:
    """The check before this one: the header opens."""
    def open_header(record):
        with Image.open(record.path) as image:
            return image.size
    with ThreadPoolExecutor(data.default_workers()) as pool:
        list(pool.map(open_header, records))


def timed(what, records, cache=None) -> float:
    start = time.perf_counter()
    if what == "header":
        header_only(records)
    else:
        data.check_images(records, cache)
    return time.perf_counter() - start


def report(label, records, folder) -> None:
    cache = Path(folder) / "verified.json"
    header = timed("header", records)
    full = timed("full", records, cache)
    again = timed("full", records, cache)
    print(f"| {label} | {len(records)} | {header:.2f} | {full:.2f} | "
          f"{1000 * full / len(records):.2f} | {again:.2f} |", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", required=True)
    parser.add_argument("--dataset", choices=data.FOLDERS, default="bird")
    parser.add_argument("--generated", type=int, default=0)
    args = parser.parse_args()
    index = data.load_dataset(args.dataset, args.data_root)
    records = index.train + index.test
    amx = "with AMX" if "amx_bf16" in open("/proc/cpuinfo").read() else "without AMX"
    print(f"machine: {cpu_name()} ({amx}), {data.default_workers()} threads "
          f"({os.cpu_count()} cores)")
    print("| photos | count | header only (s) | full check (s) | ms a photo | repeat, "
          "cached (s) |\n|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as folder:
        report(f"{index.folder.name} as stored", records, folder)
    if args.generated:
        with tempfile.TemporaryDirectory() as folder:
            made = []
            for i in range(args.generated):
                source = records[i % len(records)]
                path = Path(folder) / f"{i:06d}.jpg"
                if i < len(records):
                    with Image.open(source.path) as image:
                        image.convert("RGB").resize((500, 375)).save(path, quality=90)
                else:  # repeated: the same bytes, another file
                    path.write_bytes(made[i % len(records)].path.read_bytes())
                made.append(data.Record(path.name, path, 0))
            report("500 x 375 JPEGs", made, folder)


if __name__ == "__main__":
    main()
