"""Task 8: SimCLR pre-training, then linear, kNN and fine-tune evaluation (Table 7).

    python task8_simclr/train.py --dataset bird                        # pre-train, evaluate
    python task8_simclr/train.py --dataset bird --backbone random      # the same protocol on
    python task8_simclr/train.py --dataset bird --backbone imagenet    #   other initialisations

Pre-training (`--backbone simclr`): the common --model (from random initialisation by
default; `--weights imagenet` or a file continues from those weights) plus a projection
head, trained with NT-Xent (simclr.py) on two strong views of every train-split image
(labels unused): --simclr-epochs, --simclr-batch-size (negatives come from the batch: 2N - 2
of them; under torchrun the embeddings are gathered from every process), AdamW (or SGD,
--simclr-optimizer) with warmup and cosine.
`<out>/pretrain.pt` each epoch for --resume; TensorBoard simclr/loss and
simclr/positive_acc; the backbone goes to `<out>/backbone.pt`.

Evaluation of the backbone at each --label-fractions (a seeded, class-balanced share of the
train split; validation and test stay whole): a linear probe on frozen features (batch norm
in eval mode, backbone untouched), kNN (k=20, cosine, similarity-weighted votes) and
fine-tuning with the common flags. `<out>/fraction-<f>/metrics.json` holds linear_top1,
knn_top1, finetune_top1 and label_fraction.
"""

import argparse
import copy
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `shared` without PYTHONPATH

from shared import cli  # noqa: E402  (argparse only)

TASK = "task8_simclr"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    group = parser.add_argument_group("SimCLR")
    group.add_argument("--backbone", choices=("simclr", "random", "imagenet"), default="simclr")
    group.add_argument("--simclr-epochs", type=cli.positive_int, default=100)
    group.add_argument("--simclr-batch-size", type=cli.positive_int, default=256)
    group.add_argument("--simclr-optimizer", choices=("adamw", "sgd"), default="adamw")
    group.add_argument("--simclr-lr", type=cli.positive_float, default=1e-3,
                       help="AdamW: 1e-3; SGD (momentum 0.9): about 0.3 x batch / 256")
    group.add_argument("--simclr-warmup-epochs", type=cli.nonnegative_float, default=5.0)
    group.add_argument("--temperature", type=cli.positive_float, default=0.5)
    group.add_argument("--proj-dim", type=cli.positive_int, default=128)
    group.add_argument("--label-fractions", type=cli.share, nargs="+", default=[0.01, 0.1, 1.0])
    group.add_argument("--probe-epochs", type=cli.positive_int, default=100)
    group.add_argument("--knn", type=cli.positive_int, default=20)
    parser.set_defaults(weights=None)
    args = cli.parse_with_recipes(parser, argv)
    # The backbone names the starting weights: SimCLR pre-trains from random unless
    # --weights says otherwise; the other two are their names.
    start = {"simclr": args.weights or "none", "random": "none", "imagenet": "imagenet"}
    if args.weights not in (None, start[args.backbone]):
        parser.error(f"--backbone {args.backbone} starts from {start[args.backbone]} weights; "
                     f"--weights {args.weights} applies to --backbone simclr only")
    args.weights = start[args.backbone]
    args.out = args.out or Path("results", TASK, args.dataset, args.backbone)
    return args


if __name__ == "__main__":  # --help and bad flags answer before torch loads below
    ARGS = parse_args()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from shared import checkpoint, data, engine, models, results  # noqa: E402
from shared.data import Record  # noqa: E402
from task8_simclr.simclr import ProjectionHead, nt_xent, simclr_views  # noqa: E402


def split_head(model: nn.Module, spec: models.ModelSpec) -> int:
    """Replaces the classifier head by an identity (the model then returns features) and
    returns the feature size."""
    path = spec.head.rstrip(".").split(".")
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


def pretrain(backbone: nn.Module, features: int, spec, train: list[Record], args, rt,
             out: Path) -> None:
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
        raise engine.TrainingError(f"--simclr-batch-size {args.simclr_batch_size} exceeds "
                                   f"the {len(dataset)} training images")
    sampler = torch.utils.data.DistributedSampler(dataset, rt.world_size, rt.rank, seed=args.seed)
    workers = data.loader_workers(args, rt.device.type == "cuda")
    loader = torch.utils.data.DataLoader(dataset, batch, sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=True,
                                         pin_memory=rt.device.type == "cuda")
    fused = rt.device.type == "cuda"  # one kernel for the whole update
    optimizer = (torch.optim.AdamW(net.parameters(), args.simclr_lr, weight_decay=1e-6,
                                   fused=fused)
                 if args.simclr_optimizer == "adamw" else
                 torch.optim.SGD(net.parameters(), args.simclr_lr, momentum=0.9,
                                 weight_decay=1e-6, fused=fused))
    scheduler = engine.Schedule(args.simclr_epochs, len(loader), "cosine",
                                args.simclr_warmup_epochs).scheduler_for(optimizer)
    ddp = (torch.nn.parallel.DistributedDataParallel(net) if rt.world_size > 1 else net)
    ddp = torch.compile(ddp) if args.compile else ddp
    path = out / "pretrain.pt"
    resumable = checkpoint.Resumable(path, net=net, optimizer=optimizer, scheduler=scheduler)
    saved = resumable.restore() if args.resume else None
    start = saved["epoch"] if saved else 0
    writer = SummaryWriter(out / "tb") if rt.main else None
    for epoch in range(start, args.simclr_epochs):
        sampler.set_epoch(epoch)
        net.train()
        sums, begin = torch.zeros(2, device=rt.device), time.perf_counter()  # loss, accuracy
        guard = engine.LossGuard(rt.device, "SimCLR loss", epoch + 1,
                                 f"the last good checkpoint is {path}")
        for step, ((view1, view2), _) in enumerate(loader):
            views = engine.model_input(torch.cat([view1, view2]), spec, rt, channels_last)
            with torch.autocast(rt.device.type, rt.amp_dtype, enabled=rt.amp_dtype is not None):
                z1, z2 = ddp(views).float().chunk(2)
            loss, accuracy = nt_xent(gather(z1), gather(z2), args.temperature)
            guard.update(step, step + 1 == len(loader), loss)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            sums += torch.stack([loss.detach(), accuracy])
        loss, accuracy = (sums / len(loader)).tolist()
        if rt.main:
            writer.add_scalar("simclr/loss", loss, epoch + 1)
            writer.add_scalar("simclr/positive_acc", accuracy, epoch + 1)
            writer.flush()
            resumable.save(epoch=epoch + 1)
            print(f"SimCLR epoch {epoch + 1}/{args.simclr_epochs} loss {loss:.4f} positive "
                  f"acc {accuracy:.3f} ({time.perf_counter() - begin:.0f} s)", flush=True)
    if writer:
        writer.close()


def label_subset(records: list[Record], fraction: float, seed: int) -> list[Record]:
    """A seeded, class-balanced share: at least one image of every class."""
    by_class: dict[int, list[Record]] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(by_class):
        group = by_class[label]
        order = torch.randperm(len(group), generator=generator).tolist()
        chosen += [group[i] for i in order[:max(1, round(fraction * len(group)))]]
    return chosen


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
    logits for the test features."""
    mean, std = train_x.mean(0), train_x.std(0).clamp_min(1e-6)
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


def main(args: argparse.Namespace) -> None:
    rt = engine.init_runtime(args)
    out = checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args)
    backbone, spec = models.build_model(args.model, len(index.classes), args.weights,
                                        args.image_size)
    features = split_head(backbone, spec)
    if args.backbone == "simclr":
        pretrain(backbone, features, spec, train, args, rt, out)
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
    for fraction in args.label_fractions:
        subset = label_subset(train, fraction, args.seed)
        chosen = torch.tensor([position[r.key] for r in subset])
        train_x, train_y = all_x[chosen], all_y[chosen]
        folder = out / f"fraction-{fraction:g}"
        checkpoint.claim_run_folder(folder, args.resume)
        probes = {"linear": linear_probe(train_x, train_y, test_x, len(index.classes),
                                         args.probe_epochs, args.seed),
                  "knn": knn_scores(train_x, train_y, test_x, len(index.classes), args.knn)}
        parts = [{"metrics": {"label_fraction": fraction}}]
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
                TASK, args.backbone, args, rt, scores["metrics"],
                {"train_labelled": len(subset), "train": len(train), "val": len(val),
                 "test": len(test)}, weights=args.weights, ci95=scores["ci95"],
                predictions=scores["predictions"])
            results.write_json(record, folder / "metrics.json")
            m = scores["metrics"]
            print(f"{args.backbone} @ {fraction:g} labels: linear {m['linear_top1']:.4f}"
                  f" kNN {m['knn_top1']:.4f} fine-tune {m['finetune_top1']:.4f}")
    if rt.main:  # the run's own record, last: run_all.sh takes it to mean "finished"
        results.write_json({"task": TASK, "variant": "summary", "dataset": args.dataset,
                            "backbone": args.backbone, "fractions": args.label_fractions},
                           out / "metrics.json")
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, ARGS)
