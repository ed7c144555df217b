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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared/ without PYTHONPATH
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, any name

from shared import cli, errors  # argparse only: torch loads in main, so --help answers at once

TASK = "task5_vit"


def default_recipe(model: str) -> str:
    """The recipe of the model's kind: `vit` for a model built of attention blocks (ViT,
    DeiT, Swin, ... from any source), `strong` for a CNN."""
    if model in cli.MODELS:  # known without torch, so --help stays fast
        return "vit" if model in cli.TRANSFORMERS else "strong"
    from shared import models  # builds the model on the meta device

    try:
        return "strong" if models.is_cnn(model) else "vit"
    except errors.UsageError:
        return "strong"  # an unknown name: the run stops on it with its own message


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    # The recipe follows the model unless --recipe says otherwise (read before --help, so
    # that it shows the values that apply).
    peek = argparse.ArgumentParser(add_help=False)
    peek.add_argument("--model", default="vit_b_16")
    peek.add_argument("--recipe")
    known = peek.parse_known_args(argv)[0]
    recipe = known.recipe if known.recipe in cli.RECIPES else default_recipe(known.model)
    parser.set_defaults(model="vit_b_16", **cli.RECIPES[recipe], recipe=recipe)
    if known.model == "vit_b_16_swag":
        parser.set_defaults(image_size=384)  # the SWAG weights' own resolution
    args = parser.parse_args(argv)
    args.out = args.out or Path("results", TASK, args.dataset, args.model)
    return args


def main(args: argparse.Namespace) -> None:
    from shared import checkpoint, data, engine  # torch loads here

    rt = engine.init_runtime(args.device, args.amp, args.seed)
    checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args.dataset, args.data_root,
                                                  args.val_fraction, args.seed, args.limit)
    cfg = engine.TrainConfig.from_flags(vars(args))
    engine.train_classifier(TASK, args.model, vars(args), cfg, rt, index.classes, train, val,
                            test, measure_cost=True)
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, parse_args())
