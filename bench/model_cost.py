"""What a model costs, at its default input size: parameters, GFLOPs (forward, one image),
and training and inference images/s on this machine, side by side in one run.

    python bench/model_cost.py                       # the models tests/test_any_model.py covers
    python bench/model_cost.py --models convnext_tiny timm/vit_base_patch16_224.augreg_in21k

Random weights, a 200-class head, synthetic batches. Training runs the engine's own loop
(`bench/train_speed.py`'s `engine_steps`: SGD momentum 0.9, the engine's default precision
and memory format for the model) and inference `shared.engine.inference_speed` (the median
of its timed batches); training warms up once, then the best of `--rounds` rounds of
`--steps` batches counts, and of inference the best of `--rounds` calls.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from bench.train_speed import engine_steps
from shared import engine
from shared.models import build_model, default_size

MODELS = [  # beyond the project's first eight: what `--model` has taken since issue 25
    "convnext_tiny", "efficientnet_b0", "mobilenet_v3_small", "swin_t",
    "timm/vit_base_patch16_224.augreg_in21k", "timm/vit_small_patch14_reg4_dinov2",
    "timm/deit_tiny_distilled_patch16_224", "timm/convnext_atto", "timm/convnext_tiny",
    "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2",
]


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=MODELS)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=2, help="timed batches a round")
    parser.add_argument("--rounds", type=int, default=2, help="the best round counts")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp = engine.resolve_amp("auto", device)
    rt = engine.Runtime(device, amp_dtype=amp)
    print(f"device {device}, {torch.get_num_threads()} threads, amp {amp}, "
          f"batch {args.batch_size}\n")
    print("| model | input | params (M) | GFLOPs | train img/s | inference img/s |")
    print("|---|---|---|---|---|---|")
    for name in args.models:
        size = default_size(name)
        model, spec = build_model(name, 200, "none", size)
        params = sum(p.numel() for p in model.parameters()) / 1e6
        gflops = engine.count_gflops(model, size, device)
        if spec.is_cnn:  # as the engine runs it
            model.to(memory_format=torch.channels_last)
        infer = max(engine.inference_speed(model.to(device), size, args.batch_size, rt,
                                           spec.is_cnn) for _ in range(args.rounds))
        del model
        run = engine_steps(name, args.batch_size, size, amp, device)
        train = 0.0
        for _ in range(args.rounds):
            start = time.perf_counter()
            run(args.steps)
            train = max(train, args.batch_size * args.steps / (time.perf_counter() - start))
        del run
        print(f"| {name} | {size} | {params:.2f} | {gflops:.2f} | {train:.2f} | {infer:.2f} |",
              flush=True)
    print(f"\npeak memory of the process: {engine.peak_memory_mb(device):.0f} MB")


if __name__ == "__main__":
    main()
