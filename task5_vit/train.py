"""Task 5: ViT against CNN, accuracy and cost side by side (Table 4).

    python task5_vit/train.py --dataset bird --model vit_b_16                 # --recipe vit
    python task5_vit/train.py --dataset bird --model vit_b_32
    python task5_vit/train.py --dataset bird --model vit_b_16_swag            # at 384 px
    python task5_vit/train.py --dataset bird --model resnext101_32x8d         # --recipe strong

Each model gets a recipe that suits it: ViTs the `vit` recipe (AdamW lr 1e-4, head x10,
weight decay 0.05, layer-wise learning-rate decay 0.75, 2 warmup epochs then cosine, label
smoothing 0.1, gradient clipping 1.0, 224 px random-resized crops, 30 epochs, batch 32), CNNs
task 1-2's `strong` recipe; `--recipe` picks another. ViTs run at any --image-size (position
embeddings interpolated from the weights' grid). `--drop-path` sets stochastic depth where
the model has it (timm's lite0; torchvision's ViT and ResNeXt have none).

metrics.json adds the cost next to the accuracies: params_m, gflops (forward multiply-adds
of one image at the run's input size, counted by torch's FlopCounterMode), train_images_per_s,
infer_images_per_s (the forward pass alone, at the run's batch size and precision),
peak_mem_mb and train_seconds.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `shared` without PYTHONPATH

from shared import cli, data, engine  # noqa: E402

TASK = "task5_vit"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, parents=[cli.common_parser()],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.set_defaults(model="vit_b_16", recipe=None)
    known, _ = parser.parse_known_args(argv)
    recipe = known.recipe or ("vit" if known.model.startswith("vit") else "strong")
    parser.set_defaults(**cli.RECIPES[recipe], recipe=recipe)
    if known.model == "vit_b_16_swag":
        parser.set_defaults(image_size=384)  # the SWAG weights' own resolution
    args = parser.parse_args(argv)
    args.out = args.out or Path("results", TASK, args.dataset, args.model)
    return args


def main(args: argparse.Namespace) -> None:
    rt = engine.init_runtime(args)
    index, train, val, test = data.prepare_splits(args)
    engine.train_classifier(TASK, args.model, args, rt, index.classes, train, val, test,
                            measure_cost=True)
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, parse_args())
