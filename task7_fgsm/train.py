"""Task 7: adversarial training with FGSM, and robust accuracy measured (Table 6).

    python task7_fgsm/train.py --dataset bird                        # FGSM training, then
                                                                     #   clean + robust test
    python task7_fgsm/train.py --dataset bird --fast --adv-eps 8     # "fast" FGSM (Wong 2020)
    python task7_fgsm/train.py --dataset bird \\
        --evaluate results/task1_2_finetune/bird/pretrained/best.pt  # any checkpoint, no training

Training is task 1-2's (same flags and --recipe) with FGSM examples made on the current
model (fgsm.py; pixels in [0, 1], the budget --adv-eps in 1/255): with probability --adv-prob
(default 0.5, the seed's coin flip) per batch the whole batch is replaced (`--adv-mode
batch`), or per sample each image is (`--adv-mode sample`). The default budget, 4/255, is
about the seed's 0.1 in normalised units (0.1 x 0.226 x 255 = 5.8).

The tested model (best on validation) is then attacked on the test split: clean top-1 and
robust top-1 under FGSM and PGD-10 (random start, step 2.5 eps / 10) at --robust-eps
(default 1, 2, 4, 8 / 255), in metrics.json as `robust_top1` {"fgsm@4/255": ..,
"pgd10@4/255": .., ...}.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `shared` without PYTHONPATH

from shared import cli  # noqa: E402  (argparse only)

TASK = "task7_fgsm"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    group = parser.add_argument_group("adversarial")
    group.add_argument("--adv-eps", type=cli.positive_float, default=4.0,
                       help="training budget, in 1/255")
    group.add_argument("--adv-prob", type=cli.probability, default=0.5,
                       help="probability of replacing a batch (or a sample) by FGSM examples")
    group.add_argument("--adv-mode", choices=("batch", "sample"), default="batch")
    group.add_argument("--fast", action="store_true",
                       help="FGSM from a random start, step 1.25 eps (Wong et al. 2020)")
    group.add_argument("--robust-eps", type=cli.positive_float, nargs="+", default=[1, 2, 4, 8],
                       help="test budgets, in 1/255")
    group.add_argument("--pgd-steps", type=cli.positive_int, default=10)
    group.add_argument("--evaluate", type=Path,
                       help="only evaluate this checkpoint (a best.pt), clean and robust")
    args = cli.parse_with_recipes(parser, argv)
    variant = "standard" if args.evaluate else ("fast-fgsm" if args.fast else "fgsm")
    args.variant = variant
    args.out = args.out or Path("results", TASK, args.dataset, variant)
    return args


if __name__ == "__main__":  # --help and bad flags answer before torch loads below
    ARGS = parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from shared import checkpoint, data, engine, models, results  # noqa: E402
from task7_fgsm.fgsm import Normalized, fgsm, pgd  # noqa: E402


def adversarial_batches(args):
    """The engine's `perturb`: FGSM examples on the current model, in pixel space."""
    mean, std = models.normalisation(args.model)
    wrapped = {}  # the model with its normalisation, made once: no copy to the device a step

    def perturb(model, images, labels):
        # which images are attacked is drawn on the host, so that picking them needs no
        # wait for the device (a boolean mask on a GPU tensor would)
        if args.adv_mode == "batch":
            chosen = torch.arange(len(images) if torch.rand(()) < args.adv_prob else 0)
        else:
            chosen = (torch.rand(len(images)) < args.adv_prob).nonzero().squeeze(1)
        if len(chosen) == 0:
            return images
        if model not in wrapped:
            wrapped[model] = Normalized(model, mean, std).to(images.device)
        attacked = wrapped[model]
        chosen = chosen.to(images.device, non_blocking=True)
        pixels = (images.index_select(0, chosen) * attacked.std + attacked.mean).clamp(0, 1)
        adversarial = fgsm(attacked, pixels, labels.index_select(0, chosen), args.adv_eps,
                           random_start=args.fast)
        return images.index_copy(0, chosen, ((adversarial - attacked.mean) / attacked.std
                                             ).to(images.dtype))

    return perturb


def robust_accuracy(model, spec, loader, args, rt, out: Path) -> dict:
    """Clean top-1 and top-1 under FGSM and PGD at every test budget, over the loader's
    split (every DDP process's share gathered), each backed by a predictions file in `out`
    (written by the main process). Returns `results.merge`d scores: metrics
    `clean_top1` and `robust_top1` {"fgsm@4/255": .., ...}, intervals and files keyed
    `clean_top1` and `robust_top1:<attack>`."""
    attacked = Normalized(model, spec.mean, spec.std).to(rt.device).eval()
    names = ["clean"] + [f"{attack}@{eps:g}/255" for eps in args.robust_eps
                         for attack in ("fgsm", f"pgd{args.pgd_steps}")]
    kept = []  # per batch: logits (attacks, images, classes), on the device
    for images, labels in loader:
        pixels, labels = images.to(rt.device).float() / 255, labels.to(rt.device)
        batch = [pixels]
        for eps in args.robust_eps:
            batch.append(fgsm(attacked, pixels, labels, eps))
            batch.append(pgd(attacked, pixels, labels, eps, steps=args.pgd_steps))
        with torch.no_grad():
            kept.append(torch.stack([attacked(x).float() for x in batch]))
    records = loader.dataset.records
    logits = engine.gather_in_order(torch.cat(kept, dim=1).transpose(0, 1), len(records), rt)
    labels = np.array([r.label for r in records], dtype=np.int64)
    keys = [r.image_id or r.key for r in records]
    parts = []
    for name, attack_logits in zip(names, logits.transpose(0, 1).cpu().numpy(), strict=True):
        file = f"predictions_{name.replace('@', '_').replace('/', '_')}.npz"
        key = "clean_top1" if name == "clean" else f"robust_top1:{name}"
        parts.append(results.score_predictions(out, file, keys, labels, attack_logits,
                                               {key: 1}, write=rt.main))
    scores = results.merge(*parts)
    robust = {name.split(":", 1)[1]: scores["metrics"].pop(name)
              for name in list(scores["metrics"]) if name.startswith("robust_top1:")}
    scores["metrics"]["robust_top1"] = robust
    return scores


def main(args: argparse.Namespace) -> None:
    rt = engine.init_runtime(args)
    checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args)
    if args.evaluate:  # a trained checkpoint: clean and robust accuracy only
        model, spec, meta = models.load_classifier(args.evaluate, index.classes, "--evaluate")
        args.model, args.image_size = meta["model_name"], meta["image_size"]
        loaders = data.make_loaders(args, train, val, test, cuda=rt.device.type == "cuda")
        scores = robust_accuracy(model.to(rt.device), spec, loaders.test, args, rt,
                                 Path(args.out))
        for key in ("metrics", "ci95", "predictions"):  # the clean figure is the test's
            scores[key]["test_top1"] = scores[key]["clean_top1"]
        if rt.main:
            record = results.task_record(TASK, args.variant, args, rt, scores["metrics"],
                                         {"test": len(test)}, weights=args.evaluate,
                                         ci95=scores["ci95"],
                                         predictions=scores["predictions"])
            results.write_json(record, Path(args.out) / "metrics.json")
            metrics = scores["metrics"]
            print(f"clean {metrics['clean_top1']:.4f} robust {metrics['robust_top1']}")
    else:
        engine.train_classifier(
            TASK, args.variant, args, rt, index.classes, train, val, test,
            perturb=adversarial_batches(args),
            after=lambda model, spec, loaders, _: robust_accuracy(model, spec, loaders.test,
                                                               args, rt, Path(args.out)))
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, ARGS)
