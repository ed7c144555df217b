"""SimCLR pre-training of a backbone (Chen et al. 2020) with simclr.py's views, projection
head, NT-Xent loss and LARS: resumable, with a kNN monitor on the validation split."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import torch
from simclr import LARS, ProjectionHead, lars_groups, nt_xent, simclr_views
from torch import nn

from shared import checkpoint, cli, data, engine, errors, models
from shared.data import Record


def heads(model: nn.Module, spec: models.ModelSpec) -> list[tuple[nn.Module, str, nn.Linear]]:
    """The classifier head (both, for a distilled DeiT): its parent module, its name there
    and its linear layer."""
    found = []
    for prefix in (spec.head,) if isinstance(spec.head, str) else spec.head:
        path = prefix.rstrip(".").split(".")
        parent = model
        for name in path[:-1]:
            parent = getattr(parent, name)
        head = getattr(parent, path[-1])
        found.append((parent, path[-1], head if isinstance(head, nn.Linear) else
                      next(m for m in head.modules() if isinstance(m, nn.Linear))))
    return found


def split_head(model: nn.Module, spec: models.ModelSpec) -> int:
    """Replaces the classifier head by an identity (the model then returns features) and
    returns the feature size."""
    found = heads(model, spec)
    for parent, name, _ in found:
        setattr(parent, name, nn.Identity())
    return found[0][2].in_features


def gather(z: torch.Tensor) -> torch.Tensor:
    """Every process's embeddings, in rank order, with gradients flowing back to each owner."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return z
    import torch.distributed.nn.functional as dist_fn
    return torch.cat(dist_fn.all_gather(z))


@dataclass(frozen=True)
class SimCLRConfig:
    """SimCLR's settings, named as train.py's flags (--simclr-epochs, ...), with their
    defaults (AdamW's learning rate; train.py scales SGD's and LARS's with the batch)."""
    simclr_epochs: int = 100
    simclr_batch_size: int = 256
    simclr_optimizer: str = "adamw"
    simclr_lr: float = 1e-3
    simclr_warmup_epochs: float = 5.0
    temperature: float = 0.5
    proj_dim: int = 128
    knn_every: int = 5
    image_size: int = 224
    channels_last: bool | None = None
    compile: bool = False
    workers: int | None = None
    seed: int = 0
    resume: bool = False

    @classmethod
    def from_flags(cls, flags: dict) -> SimCLRConfig:
        return cli.pick(cls, flags)


def make_optimizer(net: nn.Module, config: SimCLRConfig, fused: bool) -> torch.optim.Optimizer:
    if config.simclr_optimizer == "lars":
        return LARS(lars_groups(net), config.simclr_lr, momentum=0.9, weight_decay=1e-6)
    if config.simclr_optimizer == "sgd":
        return torch.optim.SGD(net.parameters(), config.simclr_lr, momentum=0.9,
                               weight_decay=1e-6, fused=fused)
    return torch.optim.AdamW(net.parameters(), config.simclr_lr, weight_decay=1e-6, fused=fused)


def simclr_step(net: nn.Module, views: torch.Tensor, optimizer, temperature: float, rt
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """One SimCLR update: the embeddings of both views (`views`: the first views, then the
    second, stacked) under the run's autocast, NT-Xent over every process's batch, one
    optimiser step. Returns the loss (detached) and the positive-pair accuracy."""
    with torch.autocast(rt.device.type, rt.amp_dtype, enabled=rt.amp_dtype is not None):
        z1, z2 = net(views).float().chunk(2)
    loss, accuracy = nt_xent(gather(z1), gather(z2), temperature)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss.detach(), accuracy


def described(record: dict) -> str:
    """The monitor's part of a history record, for the log line."""
    knn = f" val kNN {record['val_knn_top1']:.3f}" if "val_knn_top1" in record else ""
    gate = f" (gate p {record['val_knn_gate_p']:.2g})" if "val_knn_gate_p" in record else ""
    return knn + gate


def out_of_memory(error: BaseException) -> bool:
    """A CUDA out-of-memory error, or a CPU allocation the system refused."""
    return isinstance(error, torch.OutOfMemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error))


def pretrain(backbone: nn.Module, features: int, spec, train: list[Record],
             config: SimCLRConfig, rt, out: Path, monitor=None) -> list[dict]:
    """SimCLR pre-training of `backbone` (resumable); `monitor(backbone)`, if given, scores
    it (a dict: the validation kNN, the gate's value) before the first epoch (history's
    epoch 0), every --knn-every epochs and after the last. Returns the history: each
    epoch's loss, positive-pair accuracy, seconds and the monitor's record."""
    from torch.utils.tensorboard import SummaryWriter

    head = ProjectionHead(features, out_features=config.proj_dim)
    net = nn.Sequential(backbone, head).to(rt.device)
    channels_last = engine.use_channels_last(config.channels_last, spec, backbone, rt.device)
    if channels_last:
        net.to(memory_format=torch.channels_last)
    need = data.decode_need(True, config.image_size, "random-resized-crop",
                            crop_scale=(0.08, 1.0))  # simclr_views' crops
    dataset = data.ImageDataset(train, simclr_views(config.image_size), need)
    batch = config.simclr_batch_size // rt.world_size
    if len(dataset) < batch * rt.world_size:
        raise errors.TrainingError(f"--simclr-batch-size {config.simclr_batch_size} exceeds "
                                   f"the {len(dataset)} training images")
    sampler = torch.utils.data.DistributedSampler(dataset, rt.world_size, rt.rank, seed=config.seed)
    workers = data.loader_workers(config.workers, rt.device.type == "cuda")
    loader = torch.utils.data.DataLoader(dataset, batch, sampler=sampler, num_workers=workers,
                                         persistent_workers=workers > 0, drop_last=True,
                                         pin_memory=rt.device.type == "cuda")
    optimizer = make_optimizer(net, config, fused=rt.device.type == "cuda")
    scheduler = engine.Schedule(config.simclr_epochs, len(loader), "cosine",
                                config.simclr_warmup_epochs).scheduler_for(optimizer)
    ddp = (torch.nn.parallel.DistributedDataParallel(net) if rt.world_size > 1 else net)
    ddp = torch.compile(ddp) if config.compile else ddp
    path = out / "pretrain.pt"
    resumable = checkpoint.Resumable(path, net=net, optimizer=optimizer, scheduler=scheduler)
    saved = resumable.restore() if config.resume else None
    start, history = (saved["epoch"], saved.get("history", [])) if saved else (0, [])
    writer = SummaryWriter(out / "tb") if rt.main else None
    if start == 0 and monitor is not None and config.knn_every:
        # the starting point (epoch 0), so the curve shows whether pre-training helps
        history.append({"epoch": 0, **monitor(backbone)})
        if rt.main:
            for key, value in history[0].items():
                if key != "epoch":
                    writer.add_scalar(f"simclr/{key}", value, 0)
            print(f"SimCLR epoch 0{described(history[0])}", flush=True)
    for epoch in range(start, config.simclr_epochs):
        sampler.set_epoch(epoch)
        net.train()
        sums, begin = torch.zeros(2, device=rt.device), time.perf_counter()  # loss, accuracy
        guard = engine.LossGuard(rt.device, "SimCLR loss", epoch + 1,
                                 f"the last good checkpoint is {path}")
        for step, ((view1, view2), _) in enumerate(loader):
            try:
                views = engine.model_input(torch.cat([view1, view2]), spec, rt, channels_last)
                loss, accuracy = simclr_step(ddp, views, optimizer, config.temperature, rt)
            except (RuntimeError, torch.OutOfMemoryError) as error:
                if not out_of_memory(error):
                    raise
                raise errors.TrainingError(
                    f"out of memory in a SimCLR step: --simclr-batch-size "
                    f"{config.simclr_batch_size} is {2 * batch} views of {config.image_size} px "
                    f"a process on {rt.device}; lower --simclr-batch-size or --image-size "
                    f"(docs/speed.md lists what fits in 24 GB)") from None
            guard.update(step, step + 1 == len(loader), loss)
            scheduler.step()
            sums += torch.stack([loss, accuracy])
        loss, accuracy = (sums / len(loader)).tolist()
        record = {"epoch": epoch + 1, "loss": loss, "positive_acc": accuracy,
                  "seconds": time.perf_counter() - begin}
        if monitor is not None and config.knn_every and (
                (epoch + 1) % config.knn_every == 0 or epoch + 1 == config.simclr_epochs):
            record.update(monitor(backbone))
        history.append(record)
        if rt.main:
            for key, value in record.items():
                if key not in ("epoch", "seconds"):
                    writer.add_scalar(f"simclr/{key}", value, epoch + 1)
            writer.flush()
            resumable.save(epoch=epoch + 1, history=history)
            print(f"SimCLR epoch {epoch + 1}/{config.simclr_epochs} loss {loss:.4f} positive "
                  f"acc {accuracy:.3f}{described(record)} ({record['seconds']:.0f} s)",
                  flush=True)
    if writer:
        writer.close()
    return history
