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
pre-training history): whether pre-training helps shows before it ends.
`<out>/pretrain.pt` each epoch for --resume; TensorBoard simclr/loss, simclr/positive_acc
and simclr/val_knn_top1; the backbone goes to `<out>/backbone.pt`.

Evaluation of the backbone at each --label-fractions (a seeded, class-balanced share of the
train split, or `N/class`: exactly N photos of every class; validation and test stay whole):
a linear probe on frozen features (batch norm in eval mode, backbone untouched), kNN (k=20,
cosine, similarity-weighted votes) and fine-tuning with the common flags.
`<out>/fraction-<f>/metrics.json` (`<out>/per-class-<N>/` for N/class) holds linear_top1,
knn_top1, finetune_top1, label_fraction (the share of the train split labelled) and
label_budget.
"""

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `shared` without PYTHONPATH

from shared import cli, errors  # noqa: E402  (argparse only)

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
    group.add_argument("--knn", type=cli.positive_int, default=20)
    group.add_argument("--knn-every", type=cli.nonnegative_int, default=5, metavar="EPOCHS",
                       help="the online kNN monitor on validation every this many epochs of "
                            "pre-training (0: off)")
    parser.set_defaults(weights=None)
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


if __name__ == "__main__":  # --help and bad flags answer before torch loads below
    ARGS = parse_args()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from shared import checkpoint, data, engine, models, results  # noqa: E402
from shared.data import Record  # noqa: E402
from shared.errors import DataError  # noqa: E402
from task8_simclr.simclr import LARS, ProjectionHead, lars_groups, nt_xent, simclr_views  # noqa: E402


def split_head(model: nn.Module, spec: models.ModelSpec) -> int:
    """Replaces the classifier head (both, for a distilled DeiT) by an identity (the model
    then returns features) and returns the feature size."""
    for prefix in (spec.head,) if isinstance(spec.head, str) else spec.head:
        path = prefix.rstrip(".").split(".")
        parent = model
        for name in path[:-1]:
            parent = getattr(parent, name)
        head = getattr(parent, path[-1])
        linear = head if isinstance(head, nn.Linear) else \
            next(m for m in head.modules() if isinstance(m, nn.Linear))
        setattr(parent, path[-1], nn.Identity())
    return linear.in_features


def gather(z: torch.Tensor) -> torch.Tensor:
    """Every process's embeddings, in rank order, with gradients flowing back to each owner."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return z
    import torch.distributed.nn.functional as dist_fn
    return torch.cat(dist_fn.all_gather(z))


def make_optimizer(net: nn.Module, args, fused: bool) -> torch.optim.Optimizer:
    if args.simclr_optimizer == "lars":
        return LARS(lars_groups(net), args.simclr_lr, momentum=0.9, weight_decay=1e-6)
    if args.simclr_optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), args.simclr_lr, momentum=0.9,
                               weight_decay=1e-6, fused=fused)
    return torch.optim.AdamW(net.parameters(), args.simclr_lr, weight_decay=1e-6, fused=fused)


def out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or a CPU allocation the system refused."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def pretrain(backbone: nn.Module, features: int, spec, train: list[Record], args, rt,
             out: Path, monitor=None) -> list[dict]:
    """SimCLR pre-training of `backbone` (resumable); `monitor(backbone)`, if given, scores
    it (the validation kNN) before the first epoch (history's epoch 0), every --knn-every
    epochs and after the last. Returns the history: each epoch's loss, positive-pair
    accuracy, seconds and `val_knn_top1`."""
    from torch.utils.tensorboard import SummaryWriter

    head = ProjectionHead(features, out_features=args.proj_dim)
    net = nn.Sequential(backbone, head).to(rt.device)
    channels_last = engine.use_channels_last(args, spec)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    need = data.decode_need(True, args.image_size, "random-resized-crop",
                            crop_scale=(0.08, 1.0))  # simclr_views' crops
    dataset = data.ImageDataset(train, simclr_views(args.image_size), need)
    batch = args.simclr_batch_size // rt.world_size
    if len(dataset) < batch * rt.world_size:
        raise errors.TrainingError(f"--simclr-batch-size {args.simclr_batch_size} exceeds "
                                   f"the {len(dataset)} training images")
    sampler = torch.utils.data.DistributedSampler(dataset, rt.world_size, rt.rank, seed=args.seed)
    workers = data.loader_workers(args, rt.device.type == "cuda")
    loader = torch.utils.data.DataLoader(dataset, batch, sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=True,
                                         pin_memory=rt.device.type == "cuda")
    optimizer = make_optimizer(net, args, fused=rt.device.type == "cuda")
    scheduler = engine.Schedule(args.simclr_epochs, len(loader), "cosine",
                                args.simclr_warmup_epochs).scheduler_for(optimizer)
    ddp = (torch.nn.parallel.DistributedDataParallel(net) if rt.world_size > 1 else net)
    ddp = torch.compile(ddp) if args.compile else ddp
    path = out / "pretrain.pt"
    resumable = checkpoint.Resumable(path, net=net, optimizer=optimizer, scheduler=scheduler)
    saved = resumable.restore() if args.resume else None
    start, history = (saved["epoch"], saved.get("history", [])) if saved else (0, [])
    writer = SummaryWriter(out / "tb") if rt.main else None
    if start == 0 and monitor is not None and args.knn_every:
        # the starting point (epoch 0), so the curve shows whether pre-training helps
        history.append({"epoch": 0, "val_knn_top1": monitor(backbone)})
        if rt.main:
            writer.add_scalar("simclr/val_knn_top1", history[0]["val_knn_top1"], 0)
            print(f"SimCLR epoch 0 val kNN {history[0]['val_knn_top1']:.3f}", flush=True)
    for epoch in range(start, args.simclr_epochs):
        sampler.set_epoch(epoch)
        net.train()
        sums, begin = torch.zeros(2, device=rt.device), time.perf_counter()  # loss, accuracy
        guard = engine.LossGuard(rt.device, "SimCLR loss", epoch + 1,
                                 f"the last good checkpoint is {path}")
        for step, ((view1, view2), _) in enumerate(loader):
            try:
                views = engine.model_input(torch.cat([view1, view2]), spec, rt, channels_last)
                with torch.autocast(rt.device.type, rt.amp_dtype,
                                    enabled=rt.amp_dtype is not None):
                    z1, z2 = ddp(views).float().chunk(2)
                loss, accuracy = nt_xent(gather(z1), gather(z2), args.temperature)
                guard.update(step, step + 1 == len(loader), loss)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not out_of_memory(error):
                    raise
                raise errors.TrainingError(
                    f"out of memory in a SimCLR step: --simclr-batch-size "
                    f"{args.simclr_batch_size} is {2 * batch} views of {args.image_size} px "
                    f"a process on {rt.device}; lower --simclr-batch-size or --image-size "
                    f"(bench/RESULTS.md lists what fits in 24 GB)") from None
            optimizer.step()
            scheduler.step()
            sums += torch.stack([loss.detach(), accuracy])
        loss, accuracy = (sums / len(loader)).tolist()
        record = {"epoch": epoch + 1, "loss": loss, "positive_acc": accuracy,
                  "seconds": time.perf_counter() - begin}
        if monitor is not None and args.knn_every and (
                (epoch + 1) % args.knn_every == 0 or epoch + 1 == args.simclr_epochs):
            record["val_knn_top1"] = monitor(backbone)
        history.append(record)
        if rt.main:
            for key in ("loss", "positive_acc", "val_knn_top1"):
                if key in record:
                    writer.add_scalar(f"simclr/{key}", record[key], epoch + 1)
            writer.flush()
            resumable.save(epoch=epoch + 1, history=history)
            knn = f" val kNN {record['val_knn_top1']:.3f}" if "val_knn_top1" in record else ""
            print(f"SimCLR epoch {epoch + 1}/{args.simclr_epochs} loss {loss:.4f} positive "
                  f"acc {accuracy:.3f}{knn} ({record['seconds']:.0f} s)", flush=True)
    if writer:
        writer.close()
    return history


def label_subset(records: list[Record], budget: float | str, seed: int) -> list[Record]:
    """A seeded, class-balanced share (`budget` a fraction: at least one image of every
    class), or exactly N images of every class (`budget` "N/class")."""
    by_class: dict[int, list[Record]] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    per_class = int(budget.split("/")[0]) if isinstance(budget, str) else None
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(by_class):
        group = by_class[label]
        if per_class is not None and len(group) < per_class:
            raise DataError(f"--label-fractions {budget}: class {label} has only {len(group)} "
                            f"training images")
        count = per_class or max(1, round(budget * len(group)))
        order = torch.randperm(len(group), generator=generator).tolist()
        chosen += [group[i] for i in order[:count]]
    return chosen


def budget_folder(budget: float | str) -> str:
    return (f"per-class-{budget.split('/')[0]}" if isinstance(budget, str)
            else f"fraction-{budget:g}")


@torch.no_grad()
def extract(backbone: nn.Module, spec, records: list[Record], transform, need, rt,
            workers: int, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every record, in order, on the host. Every DDP process extracts them
    all (a loader sharded over processes would leave each with a part), so the probes see
    the whole split in each."""
    backbone.eval()  # batch norm on its running statistics; nothing here updates it
    cuda = rt.device.type == "cuda"
    loader = torch.utils.data.DataLoader(data.ImageDataset(records, transform, need), batch,
                                         num_workers=workers, pin_memory=cuda)
    feats, labels = [], []
    for pixels, y in loader:
        images = engine.model_input(pixels, spec, rt, channels_last=False)
        feats.append(backbone(images).float())  # kept on the device: no wait a batch
        labels.append(y)
    return torch.cat(feats).cpu(), torch.cat(labels)


def linear_probe(train_x, train_y, test_x, classes: int, epochs: int, seed: int
                 ) -> torch.Tensor:
    """A softmax classifier on standardised frozen features (full-batch AdamW); returns its
    logits for the test features. A feature constant over the training images (a ReLU that
    never fires on a few labelled photos) keeps its scale, as scikit-learn's StandardScaler
    does: dividing by its ~0 spread would blow its test values up past float16's range."""
    mean, std = train_x.mean(0), train_x.std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))
    train_x, test_x = (train_x - mean) / std, (test_x - mean) / std
    torch.manual_seed(seed)
    probe = nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.AdamW(probe.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(epochs):
        loss = F.cross_entropy(probe(train_x), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return probe(test_x)


def knn_scores(train_x, train_y, test_x, classes: int, k: int) -> torch.Tensor:
    """Cosine-similarity kNN, votes weighted by exp(similarity / 0.07) (Wu et al. 2018);
    returns the log of each class's votes for the test features (-inf: none), scores whose
    argmax is the vote and which fit a float16 predictions file."""
    train_x, test_x = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    similarity, index = (test_x @ train_x.T).topk(min(k, len(train_x)), dim=1)
    votes = torch.zeros(len(test_x), classes, dtype=torch.float64).scatter_add_(
        1, train_y[index], (similarity.double() / 0.07).exp())
    return votes.log()


def knn_top1(backbone: nn.Module, spec, train: list[Record], held_out: list[Record],
             classes: int, args, rt) -> float:
    """kNN top-1 on `held_out` with every `train` image's label, scored as the final
    evaluation scores it (float16 scores, `results.score_predictions`): the online monitor."""
    transform = data.build_transform(False, args.image_size, args.resize_mode)
    need = data.decode_need(False, args.image_size, args.resize_mode)
    workers = data.loader_workers(args, rt.device.type == "cuda")
    train_x, train_y = extract(backbone, spec, train, transform, need, rt, workers)
    x, y = extract(backbone, spec, held_out, transform, need, rt, workers)
    scores = knn_scores(train_x, train_y, x, classes, args.knn).numpy()
    keys = [r.image_id or r.key for r in held_out]
    return results.score_predictions(Path("."), "", keys, y.numpy(), scores, {"knn_top1": 1},
                                     write=False)["metrics"]["knn_top1"]


def main(args: argparse.Namespace) -> None:
    rt = engine.init_runtime(args)
    out = checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args)
    backbone, spec = models.build_model(args.model, len(index.classes), args.weights,
                                        args.image_size)
    features = split_head(backbone, spec)
    history = []
    if args.backbone == "simclr":
        if not val and args.knn_every:
            print("no validation split (--val-fraction 0): the kNN monitor is off", flush=True)
        monitor = (lambda net: knn_top1(net, spec, train, val, len(index.classes), args, rt)
                   ) if val else None
        history = pretrain(backbone, features, spec, train, args, rt, out, monitor)
    backbone.to(rt.device)
    if rt.main:  # the backbone alone, loadable by build_model (the head is left out)
        checkpoint.save_atomic({"model": backbone.state_dict(), "model_name": args.model},
                               out / "backbone.pt")
    if rt.world_size > 1:
        torch.distributed.barrier()

    transform = data.build_transform(False, args.image_size, args.resize_mode)
    need = data.decode_need(False, args.image_size, args.resize_mode)
    workers = data.loader_workers(args, rt.device.type == "cuda")
    test_x, test_y = extract(backbone, spec, test, transform, need, rt, workers)
    all_x, all_y = extract(backbone, spec, train, transform, need, rt, workers)  # once, for all
    position = {r.key: i for i, r in enumerate(train)}
    test_keys = [r.image_id or r.key for r in test]
    for budget in args.label_fractions:
        subset = label_subset(train, budget, args.seed)
        fraction = len(subset) / len(train)
        chosen = torch.tensor([position[r.key] for r in subset])
        train_x, train_y = all_x[chosen], all_y[chosen]
        folder = out / budget_folder(budget)
        checkpoint.claim_run_folder(folder, args.resume)
        probes = {"linear": linear_probe(train_x, train_y, test_x, len(index.classes),
                                         args.probe_epochs, args.seed),
                  "knn": knn_scores(train_x, train_y, test_x, len(index.classes), args.knn)}
        parts = [{"metrics": {"label_fraction": fraction, "label_budget": (
            budget if isinstance(budget, str) else f"{100 * budget:g}%")}}]
        for name, logits in probes.items():
            parts.append(results.score_predictions(folder, f"{name}_predictions.npz",
                                                   test_keys, test_y.numpy(), logits.numpy(),
                                                   {f"{name}_top1": 1}, write=rt.main))
        tuned = copy.copy(args)
        tuned.weights, tuned.out = str(out / "backbone.pt"), folder / "finetune"
        result = engine.train_classifier(TASK, "finetune", tuned, rt, index.classes, subset,
                                         val, test)
        parts.append({key: {"finetune_top1": result[key]["test_top1"]}
                      for key in ("metrics", "ci95")})
        parts.append({"predictions": {
            "finetune_top1": f"finetune/{result['predictions']['test_top1']}"}})
        scores = results.merge(*parts)
        if rt.main:
            record = results.task_record(
                TASK, args.variant, args, rt, scores["metrics"],
                {"train_labelled": len(subset), "train": len(train), "val": len(val),
                 "test": len(test)}, weights=args.weights, ci95=scores["ci95"],
                predictions=scores["predictions"], pretrain_history=history)
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
    cli.run(main, ARGS)
