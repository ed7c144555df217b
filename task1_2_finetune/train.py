"""Task 1-2: training tricks and transfer learning (Table 1).

    python task1_2_finetune/train.py --dataset bird --variant pretrained
    python task1_2_finetune/train.py --dataset bird --variant baseline
    python task1_2_finetune/train.py --dataset dog --recipe strong

`--variant baseline` trains from random initialisation, `--variant pretrained` from ImageNet
weights; every other setting is identical. `--recipe seed` (the default) follows the seed
study: ResNeXt-101 32x8d, SGD lr 0.01 momentum 0.9, StepLR, batch 16, 25 epochs, letterbox to
512, random grayscale and flip. `--recipe strong` is the recipe meant to reach 90% on CUB (see
the README). Flags given on the command line override the recipe. `--measure-cost` adds Table
4's cost (params_m, gflops, train and inference images/s, peak_mem_mb, train_seconds) to
metrics.json, which makes the run a row of Table 4 as well: run_all.sh measures it on the
strong run, the CNN that Table 4 would otherwise train a second time.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared/ without PYTHONPATH
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, any name

from shared import cli  # argparse only: torch loads in main, so --help answers at once

TASK = "task1_2_finetune"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    parser.add_argument("--variant", choices=("baseline", "pretrained"), default="pretrained",
                        help="baseline: random initialisation (--weights none); pretrained: "
                             "--weights (ImageNet by default)")
    parser.add_argument("--measure-cost", action="store_true",
                        help="also record Table 4's cost columns (and so join Table 4)")
    parser.set_defaults(weights=None)  # the variant's: none for baseline, else imagenet
    args = cli.parse_with_recipes(parser, argv)
    if args.variant == "baseline" and args.weights not in (None, "none"):
        parser.error(f"--variant baseline trains from random weights; --weights "
                     f"{args.weights} contradicts it")
    if args.variant == "pretrained" and args.weights == "none":
        parser.error("--variant pretrained --weights none would train from random weights "
                     "under the name 'pretrained': use --variant baseline")
    args.weights = args.weights or ("none" if args.variant == "baseline" else "imagenet")
    args.out = args.out or Path("results", TASK, args.dataset, args.variant)
    return args


def main(args: argparse.Namespace) -> None:
    from shared import checkpoint, data, engine  # torch loads here

    rt = engine.init_runtime(args.device, args.amp, args.seed)
    checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args.dataset, args.data_root,
                                                  args.val_fraction, args.seed, args.limit)
    cfg = engine.TrainConfig.from_flags(vars(args))
    engine.train_classifier(TASK, args.variant, vars(args), cfg, rt, index.classes, train, val,
                            test, measure_cost=args.measure_cost)
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, parse_args())
