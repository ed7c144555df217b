"""Training images/s: the seed's step (fp32, contiguous) against the engine's default (AMP and
memory format as `--amp auto` and the CNN default pick on this machine), side by side in one
run, on the seed's input (512 x 512 letterbox tensors).

    python bench/train_speed.py --models resnet18 resnext101_32x8d --batch-sizes 16 4
    python bench/train_speed.py --models resnet18 --batch-sizes 16 --image-size 224 --bf16
    python bench/train_speed.py --models resnext101_32x8d --batch-sizes 32 --image-size 448 \
        --steps 10 --peak-tflops 989     # on an H100: adds model FLOP utilisation
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
from torch import nn  # noqa: E402

from shared.engine import count_gflops, cpu_has_amx, peak_memory_mb, resolve_amp  # noqa: E402
from shared.models import build_model  # noqa: E402


def images_per_s(model_name, batch, size, amp_dtype, channels_last, steps, device):
    torch.manual_seed(0)
    model, _ = build_model(model_name, 200, weights="none", image_size=size)
    model.to(device).train()
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 200, (batch,), device=device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def step():
        with torch.autocast(device.type, amp_dtype, enabled=amp_dtype is not None):
            loss = nn.functional.cross_entropy(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    step()  # warm-up: allocator, oneDNN / cuDNN kernel choice
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnext101_32x8d"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 4])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2, help="timed steps after a warm-up")
    parser.add_argument("--bf16", action="store_true",
                        help="add a column: bf16 autocast + channels_last")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak (e.g. 989 for an H100's dense bf16): adds the "
                             "engine default's model FLOP utilisation, 3 x forward FLOPs an "
                             "image (forward + backward) x images/s / peak")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    default_amp = resolve_amp("auto", device)
    print(f"device {device}, {torch.get_num_threads()} threads, AMX: {cpu_has_amx()}, "
          f"engine default: amp={default_amp}, channels_last=True (CNN)\n")
    bf16 = " bf16 + channels_last (img/s) |" if args.bf16 else ""
    mfu = " engine default MFU |" if args.peak_tflops else ""
    print(f"| model | batch | seed: fp32, contiguous (img/s) | engine default (img/s) | ratio |"
          f"{bf16}{mfu}")
    print("|---|---|---|---|---|" + ("---|" if args.bf16 else "") + ("---|" if mfu else ""))
    for name, batch in zip(args.models, args.batch_sizes, strict=True):
        seed = images_per_s(name, batch, args.image_size, None, False, args.steps, device)
        ours = images_per_s(name, batch, args.image_size, default_amp, True, args.steps,
                            device)
        row = f"| {name} | {batch} | {seed:.3f} | {ours:.3f} | {ours / seed:.2f}x |"
        if args.bf16:
            bf16_speed = images_per_s(name, batch, args.image_size, torch.bfloat16, True,
                                      args.steps, device)
            row += f" {bf16_speed:.3f} |"
        if args.peak_tflops:
            model, _ = build_model(name, 200, weights="none", image_size=args.image_size)
            flops = 2 * count_gflops(model.to(device), args.image_size, device) * 1e9
            row += f" {3 * flops * ours / (args.peak_tflops * 1e12):.1%} |"
        print(row, flush=True)
    print(f"\npeak memory of the process: {peak_memory_mb(device):.0f} MB")


if __name__ == "__main__":
    main()
