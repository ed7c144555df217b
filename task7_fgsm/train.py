"""Task 7: adversarial training with FGSM or PGD, and robust accuracy measured so that it
can be trusted (Table 6).

    python task7_fgsm/train.py --dataset bird                        # FGSM training, then
                                                                     #   clean + robust test
    python task7_fgsm/train.py --dataset bird --fast --adv-eps 8     # "fast" FGSM (Wong 2020)
    python task7_fgsm/train.py --dataset bird --adv-attack pgd --adv-steps 3   # PGD-3 (Madry)
    python task7_fgsm/train.py --dataset bird --restarts 3 \
        --evaluate results/task1_2_finetune/bird/pretrained/best.pt  # any checkpoint, no training

Training is task 1-2's (same flags and --recipe) with adversarial examples made on the
current model (fgsm.py; pixels in [0, 1], the budget --adv-eps in 1/255): with probability
--adv-prob (default 0.5, the seed's coin flip) per batch the whole batch is replaced
(`--adv-mode batch`), or per sample each image is (`--adv-mode sample`). The default budget,
4/255, is about the seed's 0.1 in normalised units (0.1 x 0.226 x 255 = 5.8). After each
epoch, on the validation split: with `--select robust` (the default) the best epoch is the
one with the highest PGD accuracy at --adv-eps (`val_robust_top1`), not the highest clean
one; and the catastrophic-overfitting guard (Wong et al. 2020) attacks a fixed batch of
validation images with PGD: if that accuracy falls more than --overfit-guard points below
its best so far, training stops there and the best epoch's weights are the ones tested.

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
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `shared` without PYTHONPATH

from shared import cli, errors  # noqa: E402  (argparse only)

TASK = "task7_fgsm"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    group = parser.add_argument_group("adversarial")
    group.add_argument("--adv-eps", type=cli.positive_float, default=4.0,
                       help="training budget, in 1/255")
    group.add_argument("--adv-prob", type=cli.probability, default=0.5,
                       help="probability of replacing a batch (or a sample) by FGSM examples")
    group.add_argument("--adv-mode", choices=("batch", "sample"), default="batch")
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
                       help="attack a seeded subset of this many test images (None: all)")
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


if __name__ == "__main__":  # --help and bad flags answer before torch loads below
    ARGS = parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from shared import checkpoint, data, engine, models, results  # noqa: E402
from task7_fgsm.fgsm import (  # noqa: E402
    UNBOUNDED,
    Normalized,
    fgsm,
    gradient_masking_checks,
    pgd,
    worst_case,
)

GUARD_IMAGES = 128  # the guard's fixed validation batch (Wong et al. watch one minibatch)


def attack_precision(rt: engine.Runtime):
    """Attacks run under the run's autocast when it is bf16, whose exponent range is fp32's,
    so input gradients do not underflow to zero (a masked gradient); fp16 runs attack in
    fp32."""
    return torch.autocast(rt.device.type, torch.bfloat16,
                          enabled=rt.amp_dtype == torch.bfloat16)


def adversarial_batches(args, rt: engine.Runtime):
    """The engine's `perturb`: FGSM or PGD examples on the current model, in pixel space."""
    mean, std = models.normalisation(args.model)
    wrapped = {}  # the model with its normalisation, made once: no copy to the device a step

    def attack(model, pixels, labels):
        with attack_precision(rt):
            if args.adv_attack == "pgd":
                return pgd(model, pixels, labels, args.adv_eps, steps=args.adv_steps)
            return fgsm(model, pixels, labels, args.adv_eps, random_start=args.fast)

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
        adversarial = attack(attacked, pixels, labels.index_select(0, chosen))
        return images.index_copy(0, chosen, ((adversarial - attacked.mean) / attacked.std
                                             ).to(images.dtype))

    return perturb


def pgd_correct(attacked, batches, eps: float, steps: int, seed: int, rt) -> tuple[int, int]:
    """Images of `batches` ((uint8 images, labels) pairs) still right after PGD at `eps`,
    and how many there were, over every DDP process; the random starts are drawn from
    `seed`, so each epoch is attacked from the same starts."""
    generator = torch.Generator(rt.device).manual_seed(seed + rt.rank)
    counts = torch.zeros(2, dtype=torch.float64, device=rt.device)
    for images, labels in batches:
        pixels, labels = images.to(rt.device).float() / 255, labels.to(rt.device)
        with attack_precision(rt):
            adversarial = pgd(attacked, pixels, labels, eps, steps=steps, generator=generator)
            with torch.no_grad():
                right = (attacked(adversarial).argmax(1) == labels).sum()
        counts += torch.stack([right.to(counts), counts.new_tensor(len(labels))])
    if rt.world_size > 1:
        torch.distributed.all_reduce(counts)
    return int(counts[0]), int(counts[1])


def validation_attacks(args, rt):
    """The engine's `epoch_end` for adversarial training: `val_robust_top1` (PGD at
    --adv-eps over the validation split) for --select robust, and the catastrophic-overfitting
    guard's `guard_robust_top1` on a fixed batch, with `stop` when it collapses."""
    attack = (args.adv_eps, args.val_pgd_steps, args.seed)
    guard_batch = []  # decoded once: the same images every epoch

    def epoch_end(model, loaders, history):
        mean, std = models.normalisation(args.model)
        attacked = Normalized(model, mean, std).to(rt.device)
        extra = {}
        if args.select == "robust":
            right, total = pgd_correct(attacked, loaders.val, *attack, rt)
            extra["val_robust_top1"] = right / total
        if args.overfit_guard > 0:
            # every process attacks the same batch, so that all of them stop together
            if not guard_batch:
                dataset = loaders.val.dataset
                batch = [dataset[i] for i in range(min(GUARD_IMAGES, len(dataset)))]
                guard_batch.append((torch.stack([image for image, _ in batch]),
                                    torch.tensor([label for _, label in batch])))
            right, total = pgd_correct(attacked, guard_batch, *attack,
                                       engine.Runtime(rt.device, amp_dtype=rt.amp_dtype))
            accuracy = extra["guard_robust_top1"] = right / total
            best = max((h["guard_robust_top1"] for h in history if "guard_robust_top1" in h),
                       default=accuracy)
            if best - accuracy > args.overfit_guard / 100:
                extra["stop"] = (f"catastrophic overfitting: PGD-{args.val_pgd_steps} accuracy "
                                 f"at {args.adv_eps:g}/255 on {total} validation images fell "
                                 f"from {best:.1%} to {accuracy:.1%}")
        return extra

    return epoch_end


def robust_accuracy(model, spec, loader, args, rt, out: Path) -> dict:
    """Clean top-1 and top-1 under FGSM, PGD (worst of --restarts) and the worst of both at
    every test budget, and under an unbounded PGD, over the loader's split (every DDP
    process's share gathered), each backed by a predictions file in `out` (written by the
    main process); then the gradient-masking checks. Returns `results.merge`d scores:
    metrics `clean_top1`, `robust_top1` {"fgsm@4/255": .., ...}, `unbounded_top1` and
    `gradient_masking`, intervals and files keyed `clean_top1` and `robust_top1:<attack>`."""
    attacked = Normalized(model, spec.mean, spec.std).to(rt.device).eval()
    pgd_name = f"pgd{args.pgd_steps}"
    names = ["clean", "unbounded"] + [f"{attack}@{eps:g}/255" for eps in args.robust_eps
                                      for attack in ("fgsm", pgd_name, "worst")]
    # restart r draws its starts from its own generator: a run with more restarts attacks
    # from the same starts and more, so restarts never raise robust accuracy
    starts = [torch.Generator(rt.device).manual_seed(args.seed + 1000 * r + rt.rank)
              for r in range(args.restarts)]

    def scores(pixels):  # rounded as the predictions files keep them: the worst case is
        with torch.no_grad():  # chosen on the logits that are scored
            return attacked(pixels).float().half().float()

    records = loader.dataset.records
    kept = []  # per batch: logits (attacks, images, classes), on the device
    begin, done = time.perf_counter(), 0
    for images, labels in loader:
        pixels, labels = images.to(rt.device).float() / 255, labels.to(rt.device)
        done += len(labels)
        with attack_precision(rt):
            batch = [scores(pixels), scores(pgd(attacked, pixels, labels, UNBOUNDED,
                                                steps=args.pgd_steps, random_start=False))]
            for eps in args.robust_eps:
                single = scores(fgsm(attacked, pixels, labels, eps))
                restarts = worst_case([scores(pgd(attacked, pixels, labels, eps,
                                                  steps=args.pgd_steps, generator=start))
                                       for start in starts], labels)
                batch += [single, restarts, worst_case([single, restarts], labels)]
        kept.append(torch.stack(batch))
        if rt.main:
            print(f"attacked {min(done * rt.world_size, len(records))}/{len(records)} test "
                  f"images ({time.perf_counter() - begin:.0f} s)", flush=True)
    logits = engine.gather_in_order(torch.cat(kept, dim=1).transpose(0, 1), len(records), rt)
    labels = np.array([r.label for r in records], dtype=np.int64)
    keys = [r.image_id or r.key for r in records]
    parts = []
    for name, attack_logits in zip(names, logits.transpose(0, 1).cpu().numpy(), strict=True):
        file = f"predictions_{name.replace('@', '_').replace('/', '_')}.npz"
        key = {"clean": "clean_top1", "unbounded": "unbounded_top1"}.get(name,
                                                                       f"robust_top1:{name}")
        parts.append(results.score_predictions(out, file, keys, labels, attack_logits,
                                               {key: 1}, write=rt.main))
    scores = results.merge(*parts)
    metrics = scores["metrics"]
    robust = {name.split(":", 1)[1]: metrics.pop(name)
              for name in list(metrics) if name.startswith("robust_top1:")}
    metrics["robust_top1"] = robust
    metrics["gradient_masking"] = gradient_masking_checks(
        metrics["clean_top1"], robust, round(metrics["unbounded_top1"] * len(records)),
        len(records), parts[0]["logits"].shape[1])
    return scores


def guard_record(args, fitted: dict, val_images: int) -> dict:
    """metrics.json's `overfit_guard`: its setting and whether (and where) it stopped."""
    stopped_at = len(fitted["history"]) if fitted["stopped"] else None
    return {"threshold_points": args.overfit_guard, "images": min(GUARD_IMAGES, val_images),
            "attack": f"pgd{args.val_pgd_steps}@{args.adv_eps:g}/255",
            "stopped_at_epoch": stopped_at, "stopped": fitted["stopped"] or None}


def main(args: argparse.Namespace) -> None:
    rt = engine.init_runtime(args)
    checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args)
    attacked_test = data.limit_per_split(test, args.test_images, args.seed)

    def attack_loader(loaders):
        if attacked_test is test:
            return loaders.test
        return data.make_loaders(args, train, val, attacked_test,
                                 cuda=rt.device.type == "cuda").test

    if args.evaluate:  # a trained checkpoint: clean and robust accuracy only
        model, spec, meta = models.load_classifier(args.evaluate, index.classes, "--evaluate")
        args.model, args.image_size = meta["model_name"], meta["image_size"]
        loaders = data.make_loaders(args, train, val, test, cuda=rt.device.type == "cuda")
        scores = robust_accuracy(model.to(rt.device), spec, attack_loader(loaders), args, rt,
                                 Path(args.out))
        for key in ("metrics", "ci95", "predictions"):  # the clean figure is the test's
            scores[key]["test_top1"] = scores[key]["clean_top1"]
        if rt.main:
            record = results.task_record(TASK, args.variant, args, rt, scores["metrics"],
                                         {"test": len(test), "test_attacked": len(attacked_test)},
                                         weights=args.evaluate, ci95=scores["ci95"],
                                         predictions=scores["predictions"])
            results.write_json(record, Path(args.out) / "metrics.json")
            metrics = scores["metrics"]
            print(f"clean {metrics['clean_top1']:.4f} robust {metrics['robust_top1']}")
    else:
        if not val and (args.select == "robust" or args.overfit_guard > 0):
            raise errors.TrainingError("--select robust and --overfit-guard attack the "
                                       "validation split: use --val-fraction > 0, or "
                                       "--select clean --overfit-guard 0")

        def after(model, spec, loaders, fitted):
            scores = robust_accuracy(model, spec, attack_loader(loaders), args, rt,
                                     Path(args.out))
            return results.merge(scores, {"metrics": {
                "overfit_guard": guard_record(args, fitted, len(val)) if args.overfit_guard
                else None}})

        engine.train_classifier(
            TASK, args.variant, args, rt, index.classes, train, val, test,
            counts={"test_attacked": len(attacked_test)},
            perturb=adversarial_batches(args, rt), after=after,
            epoch_end=validation_attacks(args, rt),
            select="val_robust_top1" if args.select == "robust" else "val_top1")
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, ARGS)
