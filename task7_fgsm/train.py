"""Task 7: adversarial training with FGSM or PGD, and robust accuracy measured so that it
can be trusted (Table 6).

    python task7_fgsm/train.py --dataset bird                        # FGSM training, then
                                                                     #   clean + robust test
    python task7_fgsm/train.py --dataset bird --fast --adv-eps 8     # "fast" FGSM (Wong 2020)
    python task7_fgsm/train.py --dataset bird --adv-attack pgd --adv-steps 3   # PGD-3 (Madry)
    python task7_fgsm/train.py --dataset bird --restarts 3 \
        --evaluate results/task1_2_finetune/bird/pretrained/best.pt  # any checkpoint, no training

Training is task 1-2's (same flags and --recipe) with adversarial examples made on the
current model (fgsm.py; pixels in [0, 1], the budget --adv-eps in 1/255): a share --adv-prob
(default 0.5) of each batch's images, drawn at random, is replaced (`--adv-mode sample`), or
the whole batch on a coin flip of that probability (`--adv-mode batch`, the seed's). The
default budget, 4/255, is about the seed's 0.1 in normalised units (0.1 x 0.226 x 255 =
5.8). After each epoch, on the validation split: with `--select robust` (the default) the
best epoch is the one with the highest PGD accuracy at --adv-eps (`val_robust_top1`; a tie
goes to the better clean accuracy), not the highest clean one; and the
catastrophic-overfitting guard (Wong et al. 2020) attacks a fixed batch of validation
images with PGD: if that accuracy falls more than --overfit-guard points below its best so
far, training stops there and the best epoch's weights are the ones tested.

The gate (Table 6 judges only training that left robustness): PGD-10 at --adv-eps on the
validation split, the trained model against --standard (default: --weights when it is a
best.pt), paired; `gates` in metrics.json passes at McNemar p < 0.01 in the trained model's
favour.

The tested model is then attacked on the test split (or a seeded --test-images subset): at
each --robust-eps budget (default 1, 2, 4, 8 / 255), FGSM and PGD-`--pgd-steps` from
--restarts random starts; an image counts as robust only if it survives FGSM and every restart
(`worst`, whose predictions file holds each image's worst logits). In metrics.json:
`clean_top1`, `robust_top1` {"fgsm@4/255": .., "pgd10@4/255": .. (worst of the restarts),
"worst@4/255": .., ...} and `gradient_masking` (Carlini et al. 2019: accuracy that rises
with the budget or with more steps, exceeds clean, or survives an unbounded attack above
chance marks a masked gradient, not robustness; Table 6 shows a failed check).
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared/ without PYTHONPATH
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, any name

from shared import cli, errors  # argparse only: torch loads in main, so --help answers at once

TASK = "task7_fgsm"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    group = parser.add_argument_group("adversarial")
    group.add_argument("--adv-eps", type=cli.positive_float, default=4.0,
                       help="training budget, in 1/255")
    group.add_argument("--adv-prob", type=cli.probability, default=0.5,
                       help="the share of each batch replaced by adversarial examples "
                            "(--adv-mode batch: the chance the whole batch is)")
    group.add_argument("--adv-mode", choices=("sample", "batch"), default="sample",
                       help="sample: --adv-prob of each batch's images, drawn at random; "
                            "batch: the whole batch on a coin flip (the seed's)")
    group.add_argument("--adv-attack", choices=("fgsm", "pgd"), default="fgsm",
                       help="the attack training examples are made with")
    group.add_argument("--adv-steps", type=cli.positive_int, default=3,
                       help="--adv-attack pgd: steps (of 2.5 eps / steps, from a random start)")
    group.add_argument("--fast", action="store_true",
                       help="FGSM from a random start, step 1.25 eps (Wong et al. 2020)")
    group.add_argument("--select", choices=("robust", "clean"), default="robust",
                       help="pick the best epoch by validation PGD accuracy at --adv-eps "
                            "(robust) or by clean validation accuracy")
    group.add_argument("--overfit-guard", type=cli.nonnegative_float, default=20.0,
                       metavar="POINTS",
                       help="stop when PGD accuracy on a fixed validation batch falls this "
                            "many points below its best so far (0: off)")
    group.add_argument("--val-pgd-steps", type=cli.positive_int, default=10,
                       help="PGD steps of --select robust and of the guard")
    group.add_argument("--robust-eps", type=cli.positive_float, nargs="+", default=[1, 2, 4, 8],
                       help="test budgets, in 1/255")
    group.add_argument("--pgd-steps", type=cli.positive_int, default=10)
    group.add_argument("--restarts", type=cli.positive_int, default=1,
                       help="PGD random starts at each test budget; the worst counts")
    group.add_argument("--test-images", type=cli.positive_int,
                       help="attack a subset of this many test images, the same for every "
                            "--seed (None: all)")
    group.add_argument("--standard", type=Path,
                       help="the standard model (a best.pt) the gate compares the trained one "
                            "with (default: --weights, when that is a best.pt)")
    group.add_argument("--evaluate", type=Path,
                       help="only evaluate this checkpoint (a best.pt), clean and robust")
    args = cli.parse_with_recipes(parser, argv)
    if args.fast and args.adv_attack != "fgsm":
        parser.error("--fast is FGSM from a random start: it needs --adv-attack fgsm")
    if args.evaluate:
        variant = "standard"
    elif args.adv_attack == "pgd":
        variant = f"pgd{args.adv_steps}"
    else:
        variant = "fast-fgsm" if args.fast else "fgsm"
    args.variant = variant
    args.out = args.out or Path("results", TASK, args.dataset, variant)
    return args


def main(args: argparse.Namespace) -> None:
    from adversarial import (  # torch loads here
        Adversary,
        adversarial_epoch,
        guard_record,
        robust_accuracy,
        robust_validation,
        robustness_gate,
    )

    from shared import checkpoint, data, engine, models, results

    rt = engine.init_runtime(args.device, args.amp, args.seed)
    checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args.dataset, args.data_root,
                                                  args.val_fraction, args.seed, args.limit)
    attacked_test = data.limit_per_split(test, args.test_images, data.TEST_SAMPLE_SEED)
    cuda = rt.device.type == "cuda"
    tests = {"eps": args.robust_eps, "pgd_steps": args.pgd_steps, "restarts": args.restarts,
             "seed": args.seed, "rt": rt, "out": Path(args.out)}

    def attack_loader(loaders, loader_config):
        if attacked_test is test:
            return loaders.test
        return data.make_loaders(train, val, attacked_test, loader_config, cuda=cuda).test

    if args.evaluate:  # a trained checkpoint: clean and robust accuracy only
        model, spec, meta = models.load_classifier(args.evaluate, index.classes, "--evaluate")
        # the view it was validated and tested on, so that its row and the adversarially
        # trained ones see the same pixels
        if not {"resize_mode", "crop_ratio"} <= meta.keys():
            print(f"warning: {args.evaluate} does not record its evaluation view (saved "
                  f"before it was): evaluating with --resize-mode {args.resize_mode} "
                  f"--crop-ratio {args.crop_ratio}", file=sys.stderr)
        for name in ("image_size", "resize_mode", "crop_ratio"):
            setattr(args, name, meta.get(name, getattr(args, name)))
        args.model = meta["model_name"]
        loader_config = data.LoaderConfig.from_flags(vars(args))
        loaders = data.make_loaders(train, val, test, loader_config, cuda=cuda)
        scores = robust_accuracy(model.to(rt.device), spec,
                                 attack_loader(loaders, loader_config), **tests)
        for key in ("metrics", "ci95", "predictions"):  # the clean figure is the test's
            scores[key]["test_top1"] = scores[key]["clean_top1"]
        if rt.main:
            record = results.task_record(TASK, args.variant, vars(args), rt, scores["metrics"],
                                         {"test": len(test), "test_attacked": len(attacked_test)},
                                         weights=args.evaluate, ci95=scores["ci95"],
                                         predictions=scores["predictions"])
            results.write_json(record, Path(args.out) / "metrics.json")
            metrics = scores["metrics"]
            print(f"clean {metrics['clean_top1']:.4f} robust {metrics['robust_top1']}")
        engine.shutdown(rt)
        return

    if not val and (args.select == "robust" or args.overfit_guard > 0):
        raise errors.TrainingError("--select robust and --overfit-guard attack the validation "
                                   "split: use --val-fraction > 0, or --select clean "
                                   "--overfit-guard 0")
    cfg = engine.TrainConfig.from_flags(vars(args))
    # training: each batch (or image) attacked with --adv-prob on the current model
    adversary = Adversary(args.adv_attack, args.adv_eps, args.adv_steps, args.fast,
                          args.adv_mode, args.adv_prob)
    # validation: PGD at --adv-eps for --select robust, and the catastrophic-overfitting guard
    validate = robust_validation(args.adv_eps, args.val_pgd_steps, args.seed,
                                 args.select == "robust", args.overfit_guard)

    standard = args.standard or (args.weights if is_classifier(args.weights) else None)

    def after(model, spec, loaders, fitted):
        scores = robust_accuracy(model, spec, attack_loader(loaders, cfg.loader), **tests)
        guard = (guard_record(args.overfit_guard, args.val_pgd_steps, args.adv_eps, fitted,
                              len(val)) if args.overfit_guard else None)
        reference = (None if standard is None else
                     models.load_classifier(standard, index.classes, "--standard")[0])
        gate = robustness_gate(model, reference, spec, loaders.val, args.adv_eps, args.seed,
                               rt)
        return results.merge(scores, {"metrics": {"overfit_guard": guard}}, gate)

    engine.train_classifier(
        TASK, args.variant, vars(args), cfg, rt, index.classes, train, val, test,
        counts={"test_attacked": len(attacked_test)}, after=after,
        train_epoch=adversarial_epoch(adversary), validate=validate,
        select="val_robust_top1" if args.select == "robust" else "val_top1")
    engine.shutdown(rt)


def is_classifier(weights) -> bool:
    """Whether --weights names a classifier's best.pt (rather than ImageNet weights)."""
    from shared import checkpoint

    path = Path(str(weights))
    return path.is_file() and "model_name" in checkpoint.load(path, "--weights")


if __name__ == "__main__":
    cli.run(main, parse_args())
