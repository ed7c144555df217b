"""Peak memory of a training step, and the largest batch that fits: the seed's step (fp32,
contiguous) against the engine's default (`--amp auto`, channels_last for CNNs), side by
side in one run. Each measurement runs in a fresh process (SGD with momentum, two steps).

On a GPU: peak allocated memory, and the largest batch found by doubling until out of
memory, then bisecting to within 5%. On a CPU: the process's peak resident memory at two
batch sizes, and the largest batch under `--memory-gb` from the straight line through them
(a CPU run at the batch that fills the memory would take hours; the line is a measured
extrapolation).

    python bench/memory.py --models resnet18 resnext101_32x8d --batch-sizes 4 8 --image-size 512
    python bench/memory.py --models resnext101_32x8d vit_b_16 --image-size 448   # on a GPU
"""

import argparse
import json
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from shared.engine import peak_memory_mb, resolve_amp  # noqa: E402
from shared.models import build_model  # noqa: E402

CONFIGS = ("seed", "engine")  # seed: fp32, contiguous; engine: its defaults here


def one_step_peak(model_name: str, batch: int, size: int, config: str) -> float:
    """Peak memory in MB of two training steps in this (fresh) process."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model, spec = build_model(model_name, 200, weights="none", image_size=size)
    model.to(device).train()
    amp = resolve_amp("auto", device) if config == "engine" else None
    channels_last = config == "engine" and spec.is_cnn
    images = torch.randn(batch, 3, size, size, device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    labels = torch.randint(0, 200, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    for _ in range(2):
        with torch.autocast(device.type, amp, enabled=amp is not None):
            loss = nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return peak_memory_mb(device)


def measure(model_name: str, batch: int, size: int, config: str) -> float | None:
    """Peak MB in a child process; None when it ran out of memory."""
    child = subprocess.run(
        [sys.executable, __file__, "--child", model_name, str(batch), str(size), config],
        capture_output=True, text=True)
    if child.returncode == 0:
        return json.loads(child.stdout.strip().splitlines()[-1])
    if "OutOfMemoryError" in child.stderr or "out of memory" in child.stderr:
        return None
    last_line = child.stderr.strip().splitlines()[-1] if child.stderr.strip() else ""
    sys.exit(f"error: {model_name} at batch {batch} ({config}) failed: {last_line}")


def largest_gpu_batch(model_name: str, size: int, config: str, start: int) -> str:
    """Double from `start` until out of memory, then bisect to within 5%."""
    fits, fails = 0, None
    batch = start
    while fails is None or fails - fits > max(1, fits // 20):
        if measure(model_name, batch, size, config) is None:
            fails = batch
        else:
            fits = batch
        batch = batch * 2 if fails is None else (fits + fails) // 2
        if fails is None and batch > 16384:
            return f"{fits} or more"
    return f"{fits} ({fails} does not fit)"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnext101_32x8d"])
    parser.add_argument("--batch-sizes", nargs=2, type=int, default=[4, 8],
                        help="the two batch sizes measured for each model")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--memory-gb", type=float, default=None,
                        help="CPU: the memory a run may use (default: this machine's total)")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        name, batch, size, config = args.child
        print(json.dumps(one_step_peak(name, int(batch), int(size), config)))
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
        for config in CONFIGS:
            peaks = [measure(name, b, args.image_size, config) for b in (small, large)]
            if None in peaks:
                print(f"| {name} | {config} | out of memory at batch {large} |||", flush=True)
                continue
            per_image = (peaks[1] - peaks[0]) / (large - small)
            if per_image <= 0:  # within the allocator's slack: batches too small to tell
                largest = "unknown (no growth measured)"
            elif cuda:
                largest = largest_gpu_batch(name, args.image_size, config, large)
            else:
                largest = f"{int(small + (limit_mb - peaks[0]) / per_image)} (extrapolated)"
            print(f"| {name} | {config} | {peaks[0]:,.0f} | {peaks[1]:,.0f} | {per_image:,.0f} "
                  f"| {largest} |", flush=True)


if __name__ == "__main__":
    main()
