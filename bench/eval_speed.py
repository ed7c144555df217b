"""Evaluation images/s by batch size and autograd mode, side by side in one run: the
engine's evaluation step (uint8 batch -> normalised input in the engine's memory format ->
logits) under `torch.no_grad` at the training batch (what evaluation did before) against
`torch.inference_mode` at larger batches.

    python bench/eval_speed.py                                    # lite0 at 224 px
    python bench/eval_speed.py --models resnet18 --image-size 96 --batch-sizes 16 64 256

Random-init weights and random pixels (the arithmetic does not depend on them); each
setting warmed up once, then `--rounds` rounds in which every setting runs `--images`
images in turn; the best round counts, so a busy moment of a shared machine costs one
round, not one setting.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from shared.engine import init_runtime, model_input, use_channels_last
from shared.models import build_model


def rate(model, spec, rt, channels_last: bool, mode: str, batch: int, size: int, count: int
         ) -> float:
    """Images per second of `count` images' evaluation steps (at least one batch)."""
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    context = torch.no_grad if mode == "no_grad" else torch.inference_mode
    batches = max(1, count // batch)
    start = time.perf_counter()
    with context(), torch.autocast(rt.device.type, rt.amp_dtype, enabled=rt.amp_dtype is not None):
        for _ in range(batches):
            model(model_input(pixels, spec, rt, channels_last)).float().argmax(1)
    if rt.device.type == "cuda":
        torch.cuda.synchronize()
    return batches * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["tf_efficientnet_lite0"])
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[16, 32, 64, 128],
                        help="the first is the training batch, also run under no_grad")
    parser.add_argument("--images", type=int, default=256, help="images a setting a round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--amp", default="auto")
    args = parser.parse_args()
    rt = init_runtime("auto", args.amp)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, {rt.device}, "
          f"autocast {rt.amp_dtype}\n")
    print("| model | px | mode | batch | img/s | vs no_grad at the first batch |\n"
          "|---|---|---|---|---|---|")
    for name in args.models:
        model, spec = build_model(name, 100, weights="none", image_size=args.image_size)
        model.to(rt.device).eval()
        channels_last = use_channels_last(None, spec, model, rt.device)
        if channels_last:
            model.to(memory_format=torch.channels_last)
        settings = [("no_grad", args.batch_sizes[0])] + [
            ("inference_mode", b) for b in args.batch_sizes]

        for setting in settings:  # warm-up
            rate(model, spec, rt, channels_last, *setting, args.image_size, setting[1])
        best = {s: 0.0 for s in settings}
        for _ in range(args.rounds):
            for setting in settings:
                best[setting] = max(best[setting], rate(model, spec, rt, channels_last, *setting,
                                                        args.image_size, args.images))
        for (mode, batch), images_per_s in best.items():
            print(f"| {name} | {args.image_size} | {mode} | {batch} | {images_per_s:.1f} | "
                  f"{images_per_s / best[settings[0]]:.2f}x |")


if __name__ == "__main__":
    main()
