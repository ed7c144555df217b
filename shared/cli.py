"""The flags every task shares (one spelling everywhere), their checks, and the way a task
script exits. Imports nothing heavy: a script's --help answers before torch loads."""

from __future__ import annotations

import argparse
import copy
import dataclasses
import re
import sys
from pathlib import Path

from shared import errors

DATASETS = ("bird", "dog")
# where each dataset's official layout keeps its true boxes (optional in both)
TRUE_BOXES = {"bird": "CUB_200_2011/bounding_boxes.txt", "dog": "StanfordDogs/Annotation"}
RESIZE_MODES = ("letterbox", "random-resized-crop", "center-crop")
# this project's own model names; --model also takes any torchvision classification model and
# timm/<name> (shared.models checks them: listing them needs torch)
MODELS = ("resnet18", "resnet50", "resnext101_32x8d", "vit_b_16", "vit_b_32", "vit_b_16_swag",
          "tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2", "vit_tiny")
TRANSFORMERS = ("vit_b_16", "vit_b_32", "vit_b_16_swag", "vit_tiny")  # of MODELS: attention

# ------------------------------------------------------------------------- value checks


def _number(kind, test, expected: str):
    """An argparse type: `kind` of the text, which `test` must accept; else one line saying
    what was `expected`."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"expected {expected}, got {text}")
        return value
    return parse


def model_name(text: str) -> str:
    """--model: a name, checked against torchvision's and timm's lists when it is built."""
    if not re.fullmatch(r"(timm/)?[A-Za-z0-9][\w.\-]*", text):
        raise argparse.ArgumentTypeError(f"expected a model name such as resnet50 or "
                                         f"timm/convnext_tiny, got {text!r}")
    return text


positive_int = _number(int, lambda v: v > 0, "an integer > 0")
nonnegative_int = _number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = _number(float, lambda v: v > 0, "a number > 0")
nonnegative_float = _number(float, lambda v: v >= 0, "a number >= 0")
fraction = _number(float, lambda v: 0 <= v < 1, "a fraction in [0, 1)")
probability = _number(float, lambda v: 0 <= v <= 1, "a probability in [0, 1]")
share = _number(float, lambda v: 0 < v <= 1, "a share in (0, 1]")


# Evaluation's batch on a CPU at most: larger ones were slower on 2 cores (lite0 at 224 px:
# 0.94x at 32, 0.68x at 64; docs/speed.md).
CPU_EVAL_BATCH_SIZE = 16

# Training recipes: defaults a task script applies with `--recipe NAME` (flags still win).
STRONG = {
    "image_size": 448, "resize_mode": "random-resized-crop", "crop_scale": 0.5,
    "crop_ratio": 1.0, "grayscale": 0.0, "epochs": 30, "batch_size": 32,
    "optimizer": "adamw", "lr": 2e-4, "head_lr_mult": 15.0, "weight_decay": 0.05,
    "scheduler": "cosine", "warmup_epochs": 1.0, "label_smoothing": 0.1,
    "head_only_epochs": 2, "freeze_stages": -3, "freeze_bn": True,
}
RECIPES = {
    "seed": {},  # the common flags' defaults are the seed's settings
    "strong": STRONG,
    # LP-FT (Kumar et al., ICLR 2022) from a linear probe head: the strong recipe unfrozen,
    # no head-only epochs, a backbone lr well below the head's, and no label smoothing (the
    # probe, fit without it, starts at a loss of about 4 under it and the first steps wreck
    # the features pulling its logits together). Task 8's default; chosen on its validation
    # curve (docs/studies/2026-12-06-epyc-tables-6-7.md).
    "lp-ft": STRONG | {
        "lr": 3e-5, "label_smoothing": 0.0, "head_only_epochs": 0, "freeze_stages": 0,
    },
    # ViT fine-tuning as in DeiT/BEiT: AdamW, warmup then cosine, layer-wise decay, label
    # smoothing; random-resized crops and flips. The seed's SGD recipe left ViT at 44-57%.
    "vit": {
        "image_size": 224, "resize_mode": "random-resized-crop", "crop_scale": 0.35,
        "grayscale": 0.0, "epochs": 30, "batch_size": 32, "optimizer": "adamw", "lr": 1e-4,
        "head_lr_mult": 10.0, "weight_decay": 0.05, "layer_decay": 0.75,
        "scheduler": "cosine", "warmup_epochs": 2.0, "label_smoothing": 0.1,
        "clip_grad": 1.0,
    },
}


def common_parser() -> argparse.ArgumentParser:
    """Parent parser: data, model, optimisation, runtime and output flags."""
    parser = argparse.ArgumentParser(add_help=False)
    add_dataset_args(parser)
    add_transform_args(parser)
    group = parser.add_argument_group("model")
    group.add_argument("--model", type=model_name, default="resnext101_32x8d",
                       help="one of " + ", ".join(MODELS) + ", any torchvision classification "
                            "model, or timm/<name> (python -m shared.models list)")
    group.add_argument("--weights", default="imagenet",
                       help="imagenet | none | a weights file (ImageNet state dict or best.pt)")
    group.add_argument("--freeze-stages", type=int, default=0,
                       help="freeze the first N stages (stem first); their batch norm stays in "
                            "eval mode")
    group = parser.add_argument_group("optimisation")
    group.add_argument("--recipe", choices=tuple(RECIPES), default="seed",
                       help="seed: the seed study's settings (the flags' defaults); strong: "
                            "the recipe meant to reach 90%% on CUB (README); lp-ft: fine-tuning "
                            "from a linear probe (task 8); vit: for ViTs")
    group.add_argument("--epochs", type=positive_int, default=25)
    group.add_argument("--batch-size", type=positive_int, default=16,
                       help="global batch size (split across DDP processes)")
    group.add_argument("--eval-batch-size", type=positive_int, default=None,
                       help="global batch size of evaluation (default: --batch-size on "
                            f"CUDA, at most {CPU_EVAL_BATCH_SIZE} on a CPU, where larger "
                            "batches ran slower)")
    group.add_argument("--lr", type=positive_float, default=0.01)
    group.add_argument("--optimizer", choices=("sgd", "adamw"), default="sgd")
    group.add_argument("--momentum", type=fraction, default=0.9, help="SGD momentum")
    group.add_argument("--nesterov", action="store_true",
                       help="Nesterov momentum (the seed used plain momentum)")
    group.add_argument("--weight-decay", type=nonnegative_float, default=0.0)
    group.add_argument("--scheduler", choices=("step", "cosine", "constant"), default="step")
    group.add_argument("--step-size", type=positive_int, default=7, help="StepLR: epochs per decay")
    group.add_argument("--gamma", type=positive_float, default=0.1, help="StepLR: decay factor")
    group.add_argument("--warmup-epochs", type=nonnegative_float, default=0.0)
    group.add_argument("--label-smoothing", type=fraction, default=0.0)
    group.add_argument("--head-lr-mult", type=positive_float, default=1.0,
                       help="learning-rate multiplier of the new classifier head")
    group.add_argument("--head-only-epochs", type=nonnegative_int, default=0,
                       help="train only the new head for the first N epochs (linear probe, "
                            "then fine-tune)")
    group.add_argument("--freeze-bn", action=argparse.BooleanOptionalAction, default=False,
                       help="keep every batch norm in eval mode (its pre-trained statistics); "
                            "its scale and shift still train")
    group.add_argument("--layer-decay", type=positive_float, default=1.0,
                       help="each stage below the head learns this factor slower (1: off)")
    group.add_argument("--drop-path", type=fraction, default=0.0,
                       help="stochastic depth rate, for models that have it (lite0)")
    group.add_argument("--clip-grad", type=nonnegative_float, default=0.0,
                       help="clip the gradient norm to this value (0: off)")
    group = parser.add_argument_group("runtime")
    group.add_argument("--device", choices=("auto", "cuda", "cpu"), default="auto")
    group.add_argument("--amp", choices=("auto", "bf16", "fp16", "off"), default="auto",
                       help="autocast; auto: bf16 on CUDA (fp16 where the GPU lacks bf16) and "
                            "on CPUs with AMX, fp32 on other CPUs, where bf16 ran 13x slower "
                            "(docs/speed.md, 'Defaults by machine'); off forces fp32")
    group.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                       help="the channels-last memory format; default: on for CNNs on every "
                            "machine measured, off for transformers (docs/speed.md); "
                            "--no-channels-last forces it off")
    group.add_argument("--compile", action="store_true",
                       help="torch.compile the model (off unless given: it paid 1.24-1.33x "
                            "on an H200 after 40 s of compiling, 0.85-1.03x on CPUs)")
    group.add_argument("--seed", type=int, default=0)
    group.add_argument("--out", type=Path, default=None,
                       help="run folder (default results/<task>/<dataset>/<variant>)")
    group.add_argument("--resume", action="store_true",
                       help="continue from <out>/last.pt (start afresh if there is none)")
    return parser


def has_true_boxes(dataset: str, data_root: str | Path) -> bool:
    """Whether the data under `--data-root` (the root or the dataset's folder itself) holds
    its true boxes."""
    path = Path(data_root) / TRUE_BOXES[dataset]
    return path.exists() or (Path(data_root).name == path.parent.name
                             and (Path(data_root) / path.name).exists())


# -------------------------------------------------------------------------------- flags


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The script's docstring as written, and every flag's default (also of flags without
    a help text, which argparse's ArgumentDefaultsHelpFormatter leaves out)."""

    def _format_action(self, action: argparse.Action) -> str:
        if (action.option_strings and action.default is not argparse.SUPPRESS
                and "%(default)" not in (action.help or "")
                and not isinstance(action, argparse._HelpAction)):
            action = copy.copy(action)
            action.help = f"{action.help or ''} (default: %(default)s)".lstrip()
        return super()._format_action(action)


def add_dataset_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """Which images: the dataset, its splits and the loader processes."""
    parser.add_argument("--dataset", choices=DATASETS, default="bird",
                        help="bird = CUB-200-2011, dog = Stanford Dogs")
    parser.add_argument("--data-root", default="data",
                        help="folder holding CUB_200_2011/ or StanfordDogs/")
    parser.add_argument("--val-fraction", type=fraction, default=0.1,
                        help="share of each class of train held out for model selection (at "
                             "least one image a class when > 0)")
    parser.add_argument("--workers", type=nonnegative_int, default=None,
                        help="loader processes (None: 0 for CPU training, whose model "
                             "needs every core; else one a core of this process's share)")
    parser.add_argument("--limit", type=positive_int, default=None,
                        help="at most this many images per split (smoke runs)")
    return parser


def add_transform_args(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """How a classifier sees them: size, geometry and augmentation."""
    parser.add_argument("--image-size", type=positive_int, default=512)
    parser.add_argument("--resize-mode", choices=RESIZE_MODES, default="letterbox",
                        help="letterbox (keep aspect, pad; the seed's), random-resized-crop "
                             "(train; resize + center crop at eval) or center-crop")
    parser.add_argument("--crop-scale", type=share, default=0.25,
                        help="random-resized-crop: smallest share of the image area kept")
    parser.add_argument("--crop-ratio", type=share, default=0.875,
                        help="center crops: image-size / resized short side")
    parser.add_argument("--hflip", type=fraction, default=0.5,
                        help="probability of a horizontal flip in training")
    parser.add_argument("--grayscale", type=fraction, default=0.1,
                        help="probability of random grayscale in training")
    return parser


def parse_with_recipes(parser: argparse.ArgumentParser, argv=None) -> argparse.Namespace:
    """`--recipe NAME` sets defaults; flags given on the command line still win. The recipe
    is read first, so `--recipe strong --help` shows the recipe's values."""
    recipe = parser.get_default("recipe")
    if recipe is not None:
        peek = argparse.ArgumentParser(add_help=False)
        peek.add_argument("--recipe", choices=tuple(RECIPES), default=recipe)
        recipe = peek.parse_known_args(argv)[0].recipe
        parser.set_defaults(**RECIPES[recipe], recipe=recipe)
    return parser.parse_args(argv)


def pick(config: type, flags: dict, **values):
    """The dataclass `config` with its fields taken from a script's flags of the same names
    (`vars(args)`), `values` overriding them; fields without a flag keep their defaults."""
    names = {f.name for f in dataclasses.fields(config)}
    return config(**{k: v for k, v in flags.items() if k in names} | values)


def task_parser(doc: str, *parents: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """A task script's parser: its docstring, the common flags (or `parents`), defaults shown."""
    return argparse.ArgumentParser(description=doc, formatter_class=HelpFormatter,
                                   parents=list(parents) or [common_parser()])


def run(main, args) -> None:
    """Run a task's main; a known failure ends with one readable line and a non-zero exit."""
    try:
        main(args)
    except errors.KNOWN as e:
        # An error raised in a DataLoader worker arrives with the worker's traceback in its
        # message; its last line is the original message.
        message = str(e).strip().splitlines()[-1]
        sys.exit(f"error: {message.removeprefix('shared.errors.DataError: ')}")
