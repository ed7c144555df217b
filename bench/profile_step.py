"""Where a training step's time goes: torch.profiler over a few steps of the engine's own
training loop (as `bench/train_speed.py` runs it), the operators that took the most device
time (CUDA kernels on a GPU, CPU time elsewhere), and the share of the step spent in
matrix multiplications and convolutions, the work that model FLOP utilisation counts.

    python bench/profile_step.py --model vit_b_16 --batch-size 64 --image-size 448 [--compile]
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import torch
from torch.autograd import DeviceType
from torch.profiler import ProfilerActivity, profile
from train_speed import engine_steps

from shared.engine import resolve_amp

# parts of the names of the aten operators (and their backward) that multiply matrices:
# mm, addmm, bmm, baddbmm, convolutions (cuDNN's, oneDNN's), fused attention
MATMUL = ("mm", "matmul", "convolution", "scaled_dot_product", "flash_attention",
          "efficient_attention")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="resnet18")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--steps", type=int, default=3, help="profiled steps, after a warm-up")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--rows", type=int, default=15, help="operators listed")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # as the engine on CUDA
    run = engine_steps(args.model, args.batch_size, args.image_size,
                       resolve_amp("auto", device), device, compile=args.compile)
    run(1)  # a second warm-up: the first ran inside engine_steps
    cuda = device.type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        run(args.steps)
        if cuda:
            torch.cuda.synchronize()
    # Operators only: on a GPU each kernel counts once, for the operator that launched it
    # (the kernels' own rows would count it again).
    key = "self_device_time_total" if cuda else "self_cpu_time_total"
    events = [e for e in prof.key_averages()
              if e.device_type == DeviceType.CPU and getattr(e, key) > 0]
    total = sum(getattr(e, key) for e in events)
    events.sort(key=lambda e: getattr(e, key), reverse=True)
    where = "device" if cuda else "CPU"
    print(f"{args.model}, batch {args.batch_size}, {args.image_size} px, compile "
          f"{args.compile}, {device}: {args.steps} steps, {total / 1e3 / args.steps:.1f} ms "
          f"of self {where} time a step\n")
    print(f"| operator | self {where} ms a step | share |\n|---|---|---|")
    for e in events[:args.rows]:
        print(f"| {e.key} | {getattr(e, key) / 1e3 / args.steps:.2f} | "
              f"{getattr(e, key) / total:.1%} |")
    matmul = sum(getattr(e, key) for e in events
                 if any(word in e.key.lower() for word in MATMUL))
    print(f"\nmatrix multiplications and convolutions (names containing {', '.join(MATMUL)}): "
          f"{matmul / total:.1%} of the self {where} time")


if __name__ == "__main__":
    main()
