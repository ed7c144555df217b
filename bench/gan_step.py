"""Seconds a generator step of task 4's GAN at the quick study's settings (32 px, batch 100,
width 64, hinge loss, spectral norm in D, G's EMA, DiffAugment), split into its parts, and
the step's FLOPs, so that its time can be read against the machine's arithmetic rate.

    python bench/gan_step.py                     # the quick study's GAN
    python bench/gan_step.py --gan-width 32      # a narrower one

Random images and labels; the first steps are warm-up. Both memory layouts are timed side
by side (contiguous, channels_last).
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "task4_dcgan"))

import torch
from dcgan import EMA, Discriminator, Generator
from diffaugment import POLICIES, diff_augment
from gan import d_step, g_step
from torch.utils.flop_counter import FlopCounterMode

from shared.results import cpu_name


def timed_steps(args, channels_last: bool) -> tuple[dict[str, float], float]:
    """Mean seconds of each part of a step over `args.steps` steps after 3 of warm-up, and
    the FLOPs of one step."""
    torch.manual_seed(0)
    layout = torch.channels_last if channels_last else torch.contiguous_format
    G = Generator(args.classes, args.gan_size, width=args.gan_width).to(memory_format=layout)
    D = Discriminator(args.classes, args.gan_size, args.gan_width, spectral_norm=True)
    D = D.to(memory_format=layout)
    opt_g = torch.optim.Adam(G.parameters(), 1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 4e-4, betas=(0.0, 0.999))
    ema = EMA(G, 0.999)
    real = torch.rand(args.batch_size, 3, args.gan_size, args.gan_size) * 2 - 1
    y = torch.randint(0, args.classes, (args.batch_size,))

    def augment(x):
        return diff_augment(x, POLICIES)

    def step(marks: list[float]):
        marks.append(time.perf_counter())
        fake = G(torch.randn(args.batch_size, G.z_dim), y)
        marks.append(time.perf_counter())
        d_step(D, opt_d, real, fake, y, augment, "hinge")
        marks.append(time.perf_counter())
        g_step(D, opt_g, fake, y, augment, "hinge")
        marks.append(time.perf_counter())
        ema.update(G)
        marks.append(time.perf_counter())

    seconds = dict.fromkeys(("G forward", "D step", "G step", "EMA"), 0.0)
    for i in range(3 + args.steps):
        marks: list[float] = []
        step(marks)
        if i >= 3:  # after the warm-up
            for name, a, b in zip(seconds, marks, marks[1:], strict=False):
                seconds[name] += (b - a) / args.steps
    with FlopCounterMode(display=False) as counter:
        step([])
    return seconds, counter.get_total_flops()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gan-size", type=int, default=32)
    parser.add_argument("--gan-width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--classes", type=int, default=100)
    parser.add_argument("--steps", type=int, default=12)
    args = parser.parse_args()
    print(f"{cpu_name()}, threads: {torch.get_num_threads()}, torch {torch.__version__}, fp32; "
          f"GAN {args.gan_size} px, width {args.gan_width}, batch {args.batch_size}")
    print("| layout | G forward | D step | G step | EMA | step | GFLOP a step | GFLOP/s |\n"
          "|---|---|---|---|---|---|---|---|")
    for channels_last in (False, True):
        seconds, flops = timed_steps(args, channels_last)
        total = sum(seconds.values())
        cells = " | ".join(f"{s * 1000:.0f} ms" for s in seconds.values())
        print(f"| {'channels_last' if channels_last else 'contiguous'} | {cells} | "
              f"{total * 1000:.0f} ms | {flops / 1e9:.1f} | {flops / 1e9 / total:.0f} |")


if __name__ == "__main__":
    main()
