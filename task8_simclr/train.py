"""Task 8: SimCLR pre-training, then linear, kNN and fine-tune evaluation (Table 7).

    python task8_simclr/train.py --dataset bird                        # pre-train, evaluate
    python task8_simclr/train.py --dataset bird --backbone random      # the same protocol on
    python task8_simclr/train.py --dataset bird --backbone imagenet    #   other initialisations

Pre-training (`--backbone simclr`): the common --model (from random initialisation by
default; `--weights imagenet` or a file continues from those weights: "ImageNet -> SimCLR")
plus a projection head, trained with NT-Xent (simclr.py) on two strong views of every
train-split image (labels unused): --simclr-epochs, --simclr-batch-size (negatives come from
the batch: 2N - 2 of them; under torchrun the embeddings are gathered from every process),
AdamW, SGD or LARS (--simclr-optimizer) with warmup and cosine; --simclr-lr defaults to
1e-3 for AdamW, 0.3 x batch / 256 for SGD and SimCLR's square-root scaling for LARS,
0.075 x sqrt(batch). Before the first epoch, every --knn-every epochs and after the last,
an online kNN monitor scores the validation split by kNN on the backbone's features of the
labelled train split, as the final evaluation does (`val_knn_top1` in TensorBoard and the
pre-training history): whether pre-training helps shows before it ends. From random, it also
records the kNN gate's value at that point (`val_knn_gate_p`, below): the gate's curve.
`<out>/pretrain.pt` each epoch for --resume; TensorBoard simclr/loss, simclr/positive_acc,
simclr/val_knn_top1 and simclr/val_knn_gate_p; the backbone goes to `<out>/backbone.pt`.

Evaluation of the backbone at each --label-fractions (a seeded, class-balanced share of the
train split, or `N/class`: exactly N photos of every class; validation and test stay whole):
a linear probe on frozen features (batch norm in eval mode, backbone untouched), kNN (k=20,
cosine, similarity-weighted votes) and fine-tuning with the common flags, from the probe as
its head (LP-FT; --finetune-head fresh: a random head). Gates (`gates` in metrics.json):
the fine-tune's best val top-1 at least the probe's; for SimCLR from random, val kNN on its
features above a random network's (McNemar p < 0.01).
`<out>/fraction-<f>/metrics.json` (`<out>/per-class-<N>/` for N/class) holds linear_top1,
knn_top1, finetune_top1, label_fraction (the share of the train split labelled) and
label_budget.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared/ without PYTHONPATH
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, any name

from shared import cli  # argparse only: torch loads in main, so --help answers at once

TASK = "task8_simclr"


def label_budget(text: str) -> float | str:
    """--label-fractions: a share of the train split in (0, 1], or `N/class`."""
    count, _, per = text.partition("/")
    if per:
        if per != "class" or not count.isdigit() or int(count) < 1:
            raise argparse.ArgumentTypeError(f"expected a share in (0, 1] or N/class (N >= 1), "
                                             f"got {text!r}")
        return f"{int(count)}/class"
    return cli.share(text)


def default_lr(optimizer: str, batch: int) -> float:
    """AdamW 1e-3; SGD linear scaling 0.3 x batch / 256; LARS SimCLR's square-root scaling
    for small batches (Chen et al. 2020, appendix B.1), 0.075 x sqrt(batch)."""
    return {"adamw": 1e-3, "sgd": 0.3 * batch / 256, "lars": 0.075 * batch ** 0.5}[optimizer]


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    group = parser.add_argument_group("SimCLR")
    group.add_argument("--backbone", choices=("simclr", "random", "imagenet"), default="simclr")
    group.add_argument("--simclr-epochs", type=cli.positive_int, default=100)
    group.add_argument("--simclr-batch-size", type=cli.positive_int, default=256)
    group.add_argument("--simclr-optimizer", choices=("adamw", "sgd", "lars"), default="adamw")
    group.add_argument("--simclr-lr", type=cli.positive_float,
                       help="default: AdamW 1e-3; SGD (momentum 0.9) 0.3 x batch / 256; LARS "
                            "0.075 x sqrt(batch)")
    group.add_argument("--simclr-warmup-epochs", type=cli.nonnegative_float, default=5.0)
    group.add_argument("--temperature", type=cli.positive_float, default=0.5)
    group.add_argument("--proj-dim", type=cli.positive_int, default=128)
    group.add_argument("--label-fractions", type=label_budget, nargs="+",
                       default=["1/class", 0.1, 1.0],
                       help="label budgets: shares of the train split, or N/class")
    group.add_argument("--probe-epochs", type=cli.positive_int, default=100)
    group.add_argument("--finetune-head", choices=("probe", "fresh"), default="probe",
                       help="probe: fine-tune from the linear probe as the head (LP-FT, "
                            "Kumar et al. 2022); fresh: from a random head")
    group.add_argument("--knn", type=cli.positive_int, default=20)
    group.add_argument("--knn-every", type=cli.nonnegative_int, default=5, metavar="EPOCHS",
                       help="the online kNN monitor on validation every this many epochs of "
                            "pre-training (0: off)")
    parser.set_defaults(weights=None, recipe="lp-ft")
    args = cli.parse_with_recipes(parser, argv)
    # The backbone names the starting weights: SimCLR pre-trains from random unless
    # --weights says otherwise; the other two are their names.
    start = {"simclr": args.weights or "none", "random": "none", "imagenet": "imagenet"}
    if args.weights not in (None, start[args.backbone]):
        parser.error(f"--backbone {args.backbone} starts from {start[args.backbone]} weights; "
                     f"--weights {args.weights} applies to --backbone simclr only")
    args.weights = start[args.backbone]
    args.simclr_lr = args.simclr_lr or default_lr(args.simclr_optimizer, args.simclr_batch_size)
    # SimCLR continued from ImageNet weights is its own row: "ImageNet -> SimCLR"
    args.variant = ("imagenet-simclr" if args.backbone == "simclr" and args.weights == "imagenet"
                    else args.backbone)
    args.out = args.out or Path("results", TASK, args.dataset, args.variant)
    return args


def main(args: argparse.Namespace) -> None:
    import torch  # torch loads here
    from pretrain import SimCLRConfig, pretrain, split_head
    from probes import (
        budget_folder,
        extract,
        knn_gate,
        knn_monitor,
        knn_scores,
        label_subset,
        linear_probe,
        probe_start,
    )

    from shared import checkpoint, data, engine, models, results

    rt = engine.init_runtime(args.device, args.amp, args.seed)
    out = checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args.dataset, args.data_root,
                                                  args.val_fraction, args.seed, args.limit)
    backbone, spec = models.build_model(args.model, len(index.classes), args.weights,
                                        args.image_size)
    features = split_head(backbone, spec)
    # the view the fine-tune evaluates with (its --crop-ratio): probe, kNN, monitor and
    # fine-tune read the same pixels of every photo
    transform = data.build_transform(False, args.image_size, args.resize_mode,
                                     crop_ratio=args.crop_ratio)
    need = data.decode_need(False, args.image_size, args.resize_mode,
                            crop_ratio=args.crop_ratio)
    workers = data.loader_workers(args.workers, rt.device.type == "cuda")
    random_features = None  # the kNN gate's reference: a random network of this seed
    if args.variant == "simclr" and val:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            random_net, _ = models.build_model(args.model, len(index.classes), "none",
                                               args.image_size)
            split_head(random_net, spec)
            random_features = [extract(random_net.to(rt.device), spec, records, transform,
                                       need, rt, workers)[0] for records in (train, val)]
        del random_net
    history = []
    if args.backbone == "simclr":
        if not val and args.knn_every:
            print("no validation split (--val-fraction 0): the kNN monitor is off", flush=True)
        monitor = (lambda net: knn_monitor(net, spec, train, val, len(index.classes), args.knn,
                                           (transform, need), args.workers, rt,
                                           random_features)) if val else None
        history = pretrain(backbone, features, spec, train,
                           SimCLRConfig.from_flags(vars(args)), rt, out, monitor)
    backbone.to(rt.device)
    if rt.main:  # the backbone alone, loadable by build_model (the head is left out)
        checkpoint.save_atomic({"model": backbone.state_dict(), "model_name": args.model},
                               out / "backbone.pt")
    if rt.world_size > 1:
        torch.distributed.barrier()

    test_x, test_y = extract(backbone, spec, test, transform, need, rt, workers)
    all_x, all_y = extract(backbone, spec, train, transform, need, rt, workers)  # once, for all
    val_x, val_y = extract(backbone, spec, val, transform, need, rt, workers) if val else (
        None, None)
    gates = []
    if args.variant == "simclr":  # from random: did pre-training learn features kNN reads?
        gates.append(knn_gate((all_x, val_x), random_features, all_y, val_y,
                              len(index.classes), args.knn))
    position = {r.key: i for i, r in enumerate(train)}
    test_keys = [r.image_id or r.key for r in test]
    for budget in args.label_fractions:
        subset = label_subset(train, budget, args.seed)
        fraction = len(subset) / len(train)
        chosen = torch.tensor([position[r.key] for r in subset])
        train_x, train_y = all_x[chosen], all_y[chosen]
        folder = out / budget_folder(budget)
        checkpoint.claim_run_folder(folder, args.resume)
        probe = linear_probe(train_x, train_y, len(index.classes), args.probe_epochs,
                             args.seed)
        probes = {"linear": probe(test_x),
                  "knn": knn_scores(train_x, train_y, test_x, len(index.classes), args.knn)}
        parts = [{"metrics": {"label_fraction": fraction, "label_budget": (
            budget if isinstance(budget, str) else f"{100 * budget:g}%")}}]
        for name, logits in probes.items():
            parts.append(results.score_predictions(folder, f"{name}_predictions.npz",
                                                   test_keys, test_y.numpy(), logits.numpy(),
                                                   {f"{name}_top1": 1}, write=rt.main))
        start = out / "backbone.pt"
        if args.finetune_head == "probe":  # LP-FT: the probe is the head fine-tuning starts from
            start = folder / "probe_start.pt"
            if rt.main:
                checkpoint.save_atomic({"model": probe_start(
                    backbone.state_dict(), args.model, len(index.classes), args.image_size,
                    probe), "model_name": args.model}, start)
            if rt.world_size > 1:
                torch.distributed.barrier()
        tuned = {**vars(args), "weights": str(start), "out": folder / "finetune"}
        result = engine.train_classifier(TASK, "finetune", tuned,
                                         engine.TrainConfig.from_flags(tuned), rt,
                                         index.classes, subset, val, test)
        if val:  # the gate: fine-tuning must not end below the probe it could start from
            linear_right = int((probe(val_x).argmax(1) == val_y).sum())  # counts: no rounding
            finetune_right = round(result["metrics"]["best_val_top1"] * len(val))
            parts.append({"metrics": {"linear_val_top1": linear_right / len(val)},
                          "gates": [results.gate(
                              "fine-tune's best val top-1 minus the linear probe's (points)",
                              100 * (finetune_right - linear_right) / len(val), 0,
                              finetune_right >= linear_right, judges=["finetune_top1"])]})
        parts.append({key: {"finetune_top1": result[key]["test_top1"]}
                      for key in ("metrics", "ci95")})
        parts.append({"predictions": {
            "finetune_top1": f"finetune/{result['predictions']['test_top1']}"}})
        scores = results.merge({"gates": gates}, *parts)
        if rt.main:
            record = results.task_record(
                TASK, args.variant, vars(args), rt, scores["metrics"],
                {"train_labelled": len(subset), "train": len(train), "val": len(val),
                 "test": len(test)}, weights=args.weights, ci95=scores["ci95"],
                predictions=scores["predictions"], pretrain_history=history,
                gates=scores.get("gates", []))
            results.write_json(record, folder / "metrics.json")
            m = scores["metrics"]
            print(f"{args.variant} @ {m['label_budget']} labels: linear {m['linear_top1']:.4f}"
                  f" kNN {m['knn_top1']:.4f} fine-tune {m['finetune_top1']:.4f}")
    if rt.main:  # the run's own record, last: run_all.sh takes it to mean "finished"
        results.write_json({"task": TASK, "variant": "summary", "dataset": args.dataset,
                            "backbone": args.variant, "fractions": args.label_fractions,
                            "pretrain_history": history}, out / "metrics.json")
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, parse_args())
