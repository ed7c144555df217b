"""Peak memory of a training step, and the largest batch that fits: the seed's step (fp32,
contiguous) against the engine's default (`--amp auto`, channels_last for CNNs), side by
side in one run. Each measurement runs in a fresh process (SGD with momentum, two steps).
`--steps simclr` measures task 8's pre-training step instead (the engine's defaults, two
views an image through backbone and projection head, NT-Xent, AdamW): its batch is
--simclr-batch-size, in images.

On a GPU: peak allocated memory, and the largest batch found by doubling until out of
memory, then bisecting to within 5%, in one process per model and step (an out-of-memory
try frees its tensors and the search goes on). On a CPU: the process's peak resident memory at two
batch sizes, and the largest batch under `--memory-gb` from the straight line through them
(a CPU run at the batch that fills the memory would take hours; the line is a measured
extrapolation).

    python bench/memory.py --models resnet18 resnext101_32x8d --batch-sizes 4 8 --image-size 512
    python bench/memory.py --models resnext101_32x8d vit_b_16 --image-size 448   # on a GPU
    python bench/memory.py --steps simclr --models tf_efficientnet_lite0 resnet50 \
        --batch-sizes 8 16 --image-size 224
"""

import argparse
import gc
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from shared.engine import peak_memory_mb, resolve_amp
from shared.models import build_model

CONFIGS = ("seed", "engine", "simclr")  # seed: fp32, contiguous; engine: its defaults here


def one_step_peak(model_name: str, batch: int, size: int, config: str) -> float:
    """Peak memory in MB of two training steps in this (fresh) process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, spec = build_model(model_name, 200, weights="none", image_size=size)
    if config == "simclr":  # backbone features through the projection head, two views
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "task8_simclr"))
        from pretrain import split_head  # task 8's modules import each other by bare name
        from simclr import ProjectionHead, nt_xent

        model = nn.Sequential(model, ProjectionHead(split_head(model, spec)))
        batch *= 2
    model.to(device).train()
    amp = resolve_amp("auto", device) if config != "seed" else None
    channels_last = config != "seed" and spec.is_cnn
    images = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 200, (batch,), device=device)
    optimizer = (torch.optim.AdamW(model.parameters(), lr=1e-3) if config == "simclr" else
                 torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9))
    for _ in range(2):
        with torch.autocast(device.type, amp, enabled=amp is not None):
            if config == "simclr":
                loss = nt_xent(*model(images).float().chunk(2))[0]
            else:
                loss = nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return peak_memory_mb(device)


def run_child(*args: str):
    """The JSON a child process of this script prints last, or exit naming what failed."""
    child = subprocess.run([sys.executable, __file__, "--child", *args],
                           capture_output=True, text=True)
    if child.returncode != 0:
        last_line = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else ""
        sys.exit(f"error: {' '.join(args)} failed: {last_line}")
    return json.loads(child.stdout.strip().splitlines()[-1])


def gpu_try(model_name: str, batch: int, size: int, config: str) -> float | str:
    """Peak MB of a step at this batch in this process, or why it failed: out of memory, or
    another CUDA error (cuDNN refuses some tensors of more than 2**31 elements)."""
    torch.cuda.reset_peak_memory_stats()
    try:
        return one_step_peak(model_name, batch, size, config)
    except torch.cuda.OutOfMemoryError:
        return "out of memory"
    except RuntimeError as error:
        return str(error).splitlines()[0]
    finally:  # the failed try's tensors went with its frames: hand their memory back
        gc.collect()
        torch.cuda.empty_cache()


def gpu_peaks_and_largest(model_name: str, size: int, config: str, small: int,
                          large: int) -> tuple[list, str]:
    """Peaks at the two batches, then the largest batch: double from `large` until a step
    fails, then bisect to within 5%."""
    peaks = [gpu_try(model_name, b, size, config) for b in (small, large)]
    if any(isinstance(peak, str) for peak in peaks):
        return [None if isinstance(peak, str) else peak for peak in peaks], ""
    fits, fails, why, batch = large, None, "", large * 2
    while fails is None or fails - fits > max(1, fits // 20):
        result = gpu_try(model_name, batch, size, config)
        if isinstance(result, str):
            fails, why = batch, result
        else:
            fits = batch
        batch = batch * 2 if fails is None else (fits + fails) // 2
        if fails is None and batch > 16384:
            return peaks, f"{fits} or more"
    return peaks, f"{fits} ({fails}: {why})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnext101_32x8d"])
    parser.add_argument("--batch-sizes", nargs=2, type=int, default=[4, 8],
                        help="the two batch sizes measured for each model")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--steps", nargs="+", choices=CONFIGS, default=["seed", "engine"],
                        help="which training steps to measure")
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="CPU: the memory a run may use (default: this machine's total)")
    parser.add_argument("--child", nargs="+", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:  # name, size, config, then one batch (CPU) or two (GPU: and search)
        name, size, config, *batches = args.child
        if torch.cuda.is_available():
            print(json.dumps(gpu_peaks_and_largest(name, int(size), config,
                                                   *map(int, batches))))
        else:
            print(json.dumps(one_step_peak(name, int(batches[0]), int(size), config)))
        return
    cuda = torch.cuda.is_available()
    if cuda:
        limit_mb = torch.cuda.get_device_properties(0).total_memory / 2**20
        where = torch.cuda.get_device_name(0)
    else:
        with open("/proc/meminfo") as f:
            total_kb = int(f.readline().split()[1])
        limit_mb = args.memory_gb * 1024 if args.memory_gb else total_kb / 1024
        where = "CPU"
    small, large = args.batch_sizes
    print(f"{where}, {args.image_size} px, memory {limit_mb:,.0f} MB; seed: fp32 contiguous; "
          f"engine: amp={resolve_amp('auto', torch.device('cuda' if cuda else 'cpu'))}, "
          "channels_last for CNNs\n")
    print(f"| model | step | peak MB at batch {small} | peak MB at batch {large} | "
          "MB per image | largest batch |\n|---|---|---|---|---|---|")
    for name in args.models:
        for config in args.steps:
            setup = (name, str(args.image_size), config)
            if cuda:
                peaks, largest = run_child(*setup, str(small), str(large))
            else:
                peaks = [run_child(*setup, str(b)) for b in (small, large)]
            if None in peaks:
                print(f"| {name} | {config} | out of memory at batch {large} |||", flush=True)
                continue
            per_image = (peaks[1] - peaks[0]) / (large - small)
            if per_image <= 0:  # within the allocator's slack: batches too small to tell
                largest = "unknown (no growth measured)"
            elif not cuda:
                largest = f"{int(small + (limit_mb - peaks[0]) / per_image)} (extrapolated)"
            print(f"| {name} | {config} | {peaks[0]:,.0f} | {peaks[1]:,.0f} | {per_image:,.0f} "
                  f"| {largest} |", flush=True)

if __name__ == "__main__":
    main()
