"""One training engine for every task: device and DDP set-up, AMP, channels_last, compile,
optimizers and schedules, checkpoints with exact resume, TensorBoard, evaluation.

    rt = init_runtime(device="auto", amp="auto", seed=0)
    cfg = TrainConfig(out=Path("runs/x"), epochs=5)          # or TrainConfig.from_flags(vars(args))
    result = fit(model, spec, loaders, cfg, rt)   # trains, then tests the best-on-val weights

or, for a task whose novelty is in its data, all of it at once (`train_classifier`). A task
changes what an epoch does by passing its own `train_epoch(loop, net, loader, epoch)`
(task 7 trains on adversarial examples) and its own `validate(loop, loaders, history)`.
"""

from __future__ import annotations

import math
import os
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from shared import checkpoint, figures, models, results, stats
from shared.cli import pick
from shared.data import LoaderConfig, Loaders, Record, make_loaders, normalize
from shared.errors import TrainingError
from shared.models import ModelSpec

BATCH_NORM = nn.modules.batchnorm._BatchNorm
PREDICTIONS = "test_predictions.npz"  # beside metrics.json: every test image's logits


# ------------------------------------------------------------------------------- runtime


@dataclass
class Runtime:
    device: torch.device
    rank: int = 0
    world_size: int = 1
    amp_dtype: torch.dtype | None = None  # autocast dtype; None = fp32

    @property
    def main(self) -> bool:  # only the main process writes files
        return self.rank == 0


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            return set(next((line for line in f if line.startswith("flags")), ":").split(":")[1]
                       .split())
    except OSError:
        return set()


def cpu_has_amx() -> bool:
    """Whether torch may use AMX here: the CPU has it and ONEDNN_MAX_CPU_ISA (which caps what
    oneDNN uses) does not hide it."""
    cap = os.environ.get("ONEDNN_MAX_CPU_ISA", "ALL").upper()
    return "amx_bf16" in cpu_flags() and (cap in ("ALL", "DEFAULT") or "AMX" in cap)


def machine_kind(device: torch.device) -> str:
    """The key of `SPEED_DEFAULTS`: cuda, cpu-amx or cpu (AVX2 or AVX-512 without AMX)."""
    if device.type == "cuda":
        return "cuda"
    return "cpu-amx" if cpu_has_amx() else "cpu"


def model_kind(model: nn.Module, spec: ModelSpec) -> str:
    """The other key of `SPEED_DEFAULTS`: transformer (any attention block), depthwise-cnn
    (EfficientNets, MobileNets, ConvNeXts: a convolution with a group per channel) or cnn."""
    if not spec.is_cnn:
        return "transformer"
    depthwise = any(isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels
                    for m in model.modules())
    return "depthwise-cnn" if depthwise else "cnn"


# What the engine turns on by default, by machine and model kind, each from a benchmark on
# such a machine (the table "Defaults by machine" in docs/speed.md, its figures and
# commands): bf16 autocast and channels_last. --amp, --channels-last / --no-channels-last
# and --compile force them. torch.compile is never on by default: on CPUs it gave
# 0.85-1.03x after a minute of compiling, on an H200 1.24-1.33x after 40 s.
SPEED_DEFAULTS = {
    "cuda": {"bf16": True, "channels_last": {"depthwise-cnn", "cnn"}},
    "cpu-amx": {"bf16": True, "channels_last": {"depthwise-cnn", "cnn"}},
    "cpu": {"bf16": False, "channels_last": {"depthwise-cnn", "cnn"}},
}


def resolve_amp(amp: str, device: torch.device) -> torch.dtype | None:
    if amp == "off":
        return None
    if amp == "fp16":
        if device.type != "cuda":
            raise TrainingError("--amp fp16 needs a CUDA device; use bf16 or off on CPU")
        return torch.float16
    if amp == "bf16":
        return torch.bfloat16
    if not SPEED_DEFAULTS[machine_kind(device)]["bf16"]:  # auto
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def init_runtime(device: str = "auto", amp: str = "auto", seed: int = 0) -> Runtime:
    """Device (`--device`), DDP when launched by torchrun (NCCL on GPU, gloo on CPU), the
    seed, AMP (`--amp`)."""
    use_cuda = device == "cuda" or (device == "auto" and torch.cuda.is_available())
    if device == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda, but no CUDA device is visible")
    rank, world = 0, int(os.environ.get("WORLD_SIZE", "1"))
    chosen = torch.device("cuda" if use_cuda else "cpu")
    # Every batch has the same shape: let cuDNN time its convolution algorithms once, keep
    # the fastest.
    torch.backends.cudnn.benchmark = use_cuda
    if world > 1:
        dist.init_process_group("nccl" if use_cuda else "gloo")
        rank = dist.get_rank()
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if use_cuda:
            chosen = torch.device("cuda", local_rank)
            torch.cuda.set_device(chosen)
        else:  # share the cores between the processes of this machine
            local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
            torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) // local_world))
    torch.manual_seed(seed)
    return Runtime(chosen, rank, world, resolve_amp(amp, chosen))


def shutdown(rt: Runtime) -> None:
    if rt.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


# ------------------------------------------------------------------ optimiser and schedule


def param_groups(model: nn.Module, spec: ModelSpec, lr: float, head_lr_mult: float,
                 weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """The new head may learn faster (`head_lr_mult`); biases and norm weights get no weight
    decay; with `layer_decay` < 1 each stage below the head learns `layer_decay` times slower
    than the one above it (layer-wise decay, as in BEiT/MAE fine-tuning: the early layers
    change least). Frozen parameters are left out."""
    depth = len(spec.stages)  # the head is stage `depth`; stage 0 the stem

    def stage(name: str) -> int:
        if name.startswith(spec.head):
            return depth
        return next((i for i, prefixes in enumerate(spec.stages)
                     if name.startswith(prefixes)), 0)

    groups: dict[tuple[int, bool], list] = {}
    for name, param in model.named_parameters():
        if param.requires_grad:
            groups.setdefault((stage(name), param.ndim <= 1), []).append(param)
    return [{"params": params,
             "lr": lr * (head_lr_mult if level == depth else layer_decay ** (depth - level)),
             "weight_decay": 0.0 if no_decay else weight_decay}
            for (level, no_decay), params in sorted(groups.items())]


def make_optimizer(groups: list[dict], device: torch.device, name: str, lr: float,
                   momentum: float = 0.9, nesterov: bool = False) -> torch.optim.Optimizer:
    """SGD (with momentum) or AdamW; weight decay comes with each parameter group."""
    fused = device.type == "cuda"  # one kernel for the whole update
    if name == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=nesterov,
                               fused=fused)
    return torch.optim.AdamW(groups, lr=lr, fused=fused)


@dataclass(frozen=True)
class Schedule:
    """The learning-rate multiplier at each optimisation step: linear warmup, then step decay
    (the seed's StepLR), cosine to zero, or constant."""
    epochs: int
    steps_per_epoch: int
    scheduler: str = "cosine"  # step | cosine | constant
    warmup_epochs: float = 0.0
    step_size: int = 7  # step: epochs per decay
    gamma: float = 0.1  # step: decay factor

    def factor(self, step: int) -> float:
        warmup = round(self.warmup_epochs * self.steps_per_epoch)
        if step < warmup:
            return (step + 1) / warmup
        if self.scheduler == "step":
            return self.gamma ** (step // (self.step_size * self.steps_per_epoch))
        if self.scheduler == "cosine":
            total = max(self.epochs * self.steps_per_epoch - warmup, 1)
            return 0.5 * (1 + math.cos(math.pi * min(step - warmup, total) / total))
        return 1.0

    def scheduler_for(self, optimizer: torch.optim.Optimizer):
        return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: self.factor(step))


# ---------------------------------------------------------------------------- evaluation


@torch.inference_mode()  # no autograd bookkeeping at all (no_grad still versions tensors)
def evaluate(model: nn.Module, spec: ModelSpec, loader: DataLoader, rt: Runtime,
             channels_last: bool, outputs: bool = False) -> dict:
    """Top-1, top-5 and loss over every image of the loader's split, summed across
    processes (the loader's ShardSampler gives each image to exactly one process). With
    `outputs`, also `logits`: every image's, in the dataset's order, on every process."""
    model.eval()
    sums = torch.zeros(4, dtype=torch.float64, device=rt.device)  # correct1, correct5, loss, n
    kept = []
    for images, labels in loader:
        images = model_input(images, spec, rt, channels_last)
        labels = labels.to(rt.device, non_blocking=True)
        with torch.autocast(rt.device.type, rt.amp_dtype, enabled=rt.amp_dtype is not None):
            logits = model(images)
        correct = _correct(logits.float(), labels, k=5)
        loss = nn.functional.cross_entropy(logits.float(), labels, reduction="sum")
        sums += torch.stack([correct[0], correct[1], loss,
                             torch.full_like(loss, len(labels))]).to(sums)
        if outputs:
            kept.append(logits.float())  # on the device: no wait a batch
    if rt.world_size > 1:
        dist.all_reduce(sums)
    n = int(sums[3])
    result = {"top1": (sums[0] / max(n, 1)).item(), "top5": (sums[1] / max(n, 1)).item(),
              "loss": (sums[2] / max(n, 1)).item(), "count": n}
    if outputs:
        result["logits"] = gather_in_order(torch.cat(kept), len(loader.dataset), rt).cpu()
    return result


def gather_in_order(rows: torch.Tensor, total: int, rt: Runtime) -> torch.Tensor:
    """Rows made on each process's ShardSampler share (rank r: items r, r + W, ...), put
    back in the dataset's order on every process."""
    if rt.world_size == 1:
        return rows
    per_rank = -(-total // rt.world_size)
    padded = rows.new_zeros((per_rank, *rows.shape[1:]))
    padded[:len(rows)] = rows
    gathered = [torch.empty_like(padded) for _ in range(rt.world_size)]
    dist.all_gather(gathered, padded)
    # item j * W + r is row j of rank r
    return torch.stack(gathered, dim=1).flatten(0, 1)[:total]


def _correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> torch.Tensor:
    """Number of top-1 and top-k hits (k capped at the number of classes)."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hits = top == labels[:, None]
    return torch.stack([hits[:, 0].sum(), hits.any(dim=1).sum()]).float()


def use_channels_last(channels_last: bool | None, spec: ModelSpec, model: nn.Module,
                      device: torch.device) -> bool:
    """--channels-last / --no-channels-last, else (None) what `SPEED_DEFAULTS` says for
    this machine and kind of model."""
    if channels_last is not None:
        return channels_last
    return model_kind(model, spec) in SPEED_DEFAULTS[machine_kind(device)]["channels_last"]


def model_input(pixels: torch.Tensor, spec: ModelSpec, rt: Runtime,
                channels_last: bool) -> torch.Tensor:
    """A loader's uint8 batch -> the model's normalised input on the device."""
    pixels = pixels.to(rt.device, non_blocking=True)
    if channels_last:  # on the uint8 pixels: a quarter of the bytes to reorder
        pixels = pixels.contiguous(memory_format=torch.channels_last)
    return normalize(pixels, spec.mean, spec.std)


# ------------------------------------------------------------------------------ training


@dataclass
class TrainConfig:
    """What training a classifier takes from the common flags, with the flags' defaults: a
    notebook builds one (`TrainConfig(out=Path("runs/x"), epochs=5)`), a script takes it
    from its flags (`TrainConfig.from_flags(vars(args))`)."""
    out: Path = Path("results/run")
    resume: bool = False
    # the model
    model: str = "resnext101_32x8d"
    weights: str = "imagenet"
    freeze_stages: int = 0
    drop_path: float = 0.0
    # optimisation
    epochs: int = 25
    lr: float = 0.01
    optimizer: str = "sgd"
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 0.0
    scheduler: str = "step"
    step_size: int = 7
    gamma: float = 0.1
    warmup_epochs: float = 0.0
    label_smoothing: float = 0.0
    head_lr_mult: float = 1.0
    head_only_epochs: int = 0
    freeze_bn: bool = False
    layer_decay: float = 1.0
    clip_grad: float = 0.0
    channels_last: bool | None = None
    compile: bool = False
    # the images: size, augmentation, batch, loader processes, the sampler's seed
    loader: LoaderConfig = field(default_factory=LoaderConfig)

    @classmethod
    def from_flags(cls, flags: dict) -> TrainConfig:
        """The fields of the same names from a script's flags (`vars(args)`)."""
        return pick(cls, flags, out=Path(flags["out"]), loader=LoaderConfig.from_flags(flags))


@dataclass
class RunState:
    """Everything `last.pt` carries besides model, optimiser, schedule and scaler."""
    epoch: int = 0  # the next epoch to run
    history: list = field(default_factory=list)
    best_val_top1: float = -1.0  # the selection score (`fit`'s `select`) of the best epoch
    best_epoch: int = -1
    train_seconds: float = 0.0
    train_images: int = 0
    stopped: str = ""  # why `validate` stopped the run early ("" while it has not)


class LossGuard:
    """Stops a loop at its first non-finite loss without making the host wait for the device
    every step: the first bad step and its loss are kept on the device and read every
    `check_every` steps and at the end of the epoch (a read waits for the GPU to finish the
    work queued so far, after which it idles while Python queues the next step). A bad step
    is reported up to `check_every` - 1 steps late; no checkpoint is written in between."""

    def __init__(self, device: torch.device, what: str, epoch: int, then: str,
                 check_every: int = 20):
        self.what, self.epoch, self.then, self.check_every = what, epoch, then, check_every
        self.first_step = torch.full((), -1, dtype=torch.long, device=device)
        self.first_loss = torch.zeros((), device=device)

    def update(self, step: int, last: bool, *losses: torch.Tensor) -> None:
        """After step `step` (0-based) of an epoch whose last step is `last`."""
        loss = torch.stack([x.detach().float() for x in losses]).sum()
        new = (self.first_step < 0) & ~torch.isfinite(loss)
        self.first_step = torch.where(new, step, self.first_step)
        self.first_loss = torch.where(new, loss, self.first_loss)
        if last or (step + 1) % self.check_every == 0:
            bad_step = int(self.first_step)
            if bad_step >= 0:
                raise TrainingError(
                    f"non-finite {self.what} ({self.first_loss.item()}) at epoch {self.epoch}, "
                    f"step {bad_step + 1}; {self.then}")


class Progress:
    """images/s and loss while an epoch runs: redrawn on a terminal, else a line every 30 s."""

    def __init__(self, enabled: bool, label: str, steps: int):
        self.enabled, self.label, self.steps = enabled, label, steps
        self.tty = sys.stdout.isatty()
        self.start = self.last = time.monotonic()

    def update(self, step: int, images: int, loss: torch.Tensor) -> None:
        now = time.monotonic()
        if self.enabled and now - self.last >= (1 if self.tty else 30):
            self.last = now
            rate = images / (now - self.start)
            print(f"{self.label} step {step}/{self.steps} loss {loss.item():.4f} "
                  f"{rate:.1f} img/s",
                  end="\r" if self.tty else "\n", flush=True)


class EpochMeter:
    """A training epoch's summed loss, hits and images (on the device, summed over every
    process at the end), its non-finite-loss guard and its progress line."""

    def __init__(self, loop: Loop, epoch: int, steps: int):
        self.rt, self.steps = loop.rt, steps
        self.sums = torch.zeros(3, dtype=torch.float64, device=loop.rt.device)
        self.progress = Progress(loop.rt.main, f"epoch {epoch + 1}/{loop.epochs}", steps)
        self.guard = LossGuard(loop.rt.device, "loss", epoch + 1,
                               f"stopped. The last good checkpoint is {loop.last_path}")

    def check(self, step: int, loss: torch.Tensor) -> None:
        """Before the update: a non-finite loss stops the run (`LossGuard`)."""
        self.guard.update(step, step + 1 == self.steps, loss)

    def add(self, step: int, loss: torch.Tensor, logits: torch.Tensor,
            labels: torch.Tensor) -> None:
        hits = _correct(logits.detach().float(), labels, 1)[0]
        # full_like fills on the device; a tensor made from a host number would be a copy
        # the host waits for
        self.sums += torch.stack([loss.detach() * len(labels), hits,
                                  torch.full_like(hits, len(labels))]).to(self.sums)
        self.progress.update(step + 1, (step + 1) * len(labels), loss.detach())

    def total(self) -> torch.Tensor:
        if self.rt.world_size > 1:
            dist.all_reduce(self.sums)
        return self.sums


@dataclass
class Loop:
    """What a training epoch works with: the model (unwrapped) and its spec, the optimiser,
    schedule, gradient scaler and loss, the device and precision."""
    model: nn.Module
    spec: ModelSpec
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler
    scaler: torch.amp.GradScaler
    criterion: nn.Module
    rt: Runtime
    channels_last: bool
    clip_grad: float  # the gradient norm's ceiling (0: off)
    epochs: int
    last_path: Path

    def to_device(self, pixels: torch.Tensor, labels: torch.Tensor):
        """A loader's uint8 batch -> the model's normalised input and the labels."""
        return (model_input(pixels, self.spec, self.rt, self.channels_last),
                labels.to(self.rt.device, non_blocking=True))

    def forward(self, net: nn.Module, images: torch.Tensor, labels: torch.Tensor):
        """The loss and logits, under the run's autocast."""
        rt = self.rt
        with torch.autocast(rt.device.type, rt.amp_dtype, enabled=rt.amp_dtype is not None):
            logits = net(images)
            return self.criterion(logits.float(), labels), logits

    def update(self, loss: torch.Tensor) -> None:
        """Backward, clip, step the optimiser and the schedule."""
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if self.clip_grad > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.clip_grad)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()

    def evaluate(self, loader: DataLoader, outputs: bool = False) -> dict:
        return evaluate(self.model, self.spec, loader, self.rt, self.channels_last, outputs)


def train_epoch(loop: Loop, net: nn.Module, loader: DataLoader, epoch: int) -> torch.Tensor:
    """One pass over the training loader (epoch `epoch`, from 0); returns the summed loss,
    hits and images over every process (`EpochMeter`)."""
    meter = EpochMeter(loop, epoch, len(loader))
    for step, (images, labels) in enumerate(loader):
        images, labels = loop.to_device(images, labels)
        loss, logits = loop.forward(net, images, labels)
        meter.check(step, loss)
        loop.update(loss)
        meter.add(step, loss, logits, labels)
    return meter.total()


def validate_top1(loop: Loop, loaders: Loaders, history: list[dict]) -> dict:
    """The validation split's top-1, by which the best epoch is chosen. A task's own
    `validate` may add entries (task 7: robust accuracy) and `stop` (the reason), which
    ends training there, that epoch never chosen as the best."""
    return {"val_top1": loop.evaluate(loaders.val)["top1"]}


def make_loop(model: nn.Module, spec: ModelSpec, cfg: TrainConfig, rt: Runtime,
              steps_per_epoch: int) -> tuple[Loop, Schedule]:
    """The model on the device (channels_last for CNNs), its optimiser and schedule."""
    channels_last = use_channels_last(cfg.channels_last, spec, model, rt.device)
    model.to(rt.device)
    if channels_last:
        model.to(memory_format=torch.channels_last)
    groups = param_groups(model, spec, cfg.lr, cfg.head_lr_mult, cfg.weight_decay,
                          cfg.layer_decay)
    optimizer = make_optimizer(groups, rt.device, cfg.optimizer, cfg.lr, cfg.momentum,
                               cfg.nesterov)
    if steps_per_epoch == 0:
        raise TrainingError(f"the training split has fewer images than one batch "
                            f"(--batch-size {cfg.loader.batch_size})")
    schedule = Schedule(cfg.epochs, steps_per_epoch, cfg.scheduler, cfg.warmup_epochs,
                        cfg.step_size, cfg.gamma)
    scaler = torch.amp.GradScaler(rt.device.type, enabled=rt.amp_dtype == torch.float16)
    return Loop(model, spec, optimizer, schedule.scheduler_for(optimizer), scaler,
                nn.CrossEntropyLoss(label_smoothing=cfg.label_smoothing), rt, channels_last,
                cfg.clip_grad, cfg.epochs, Path(cfg.out) / "last.pt"), schedule


class Phases:
    """Which parameters and batch norms train in an epoch. --head-only-epochs: a linear
    probe first (backbone and its batch norm fixed), then fine-tuning from a trained head,
    which distorts the features less (Kumar et al. 2022); `frozen` modules and, with
    --freeze-bn, every batch norm keep their statistics. DDP registers the trainable
    parameters once, so the model is wrapped anew when the phase changes."""

    def __init__(self, model: nn.Module, spec: ModelSpec, cfg: TrainConfig, rt: Runtime,
                 frozen: list[str]):
        self.model, self.cfg, self.rt, self.frozen = model, cfg, rt, set(frozen)
        self.body = [p for n, p in model.named_parameters() if p.requires_grad
                     and not n.startswith(spec.head)]
        self.head_modules = {n for n, _ in model.named_modules()
                             if (n + ".").startswith(spec.head)}
        self.net, self.head_only = None, None

    def net_for(self, epoch: int) -> nn.Module:
        """The network to train in `epoch`, in train mode but for its fixed modules."""
        head_only = epoch < self.cfg.head_only_epochs
        if self.net is None or head_only != self.head_only:
            for param in self.body:
                param.requires_grad_(not head_only)
            net = (DistributedDataParallel(self.model) if self.rt.world_size > 1
                   else self.model)
            self.net = torch.compile(net) if self.cfg.compile else net
            self.head_only = head_only
        self.net.train()
        for name, module in self.model.named_modules():
            fixed = (name not in self.head_modules if head_only else name in self.frozen
                     or (self.cfg.freeze_bn and isinstance(module, BATCH_NORM)))
            if name and fixed:
                module.eval()
        return self.net


def fit(model: nn.Module, spec: ModelSpec, loaders: Loaders, cfg: TrainConfig, rt: Runtime,
        *, frozen: list[str] = (), meta: dict | None = None, train_epoch=train_epoch,
        validate=validate_top1, select: str = "val_top1") -> dict:
    """Train for `cfg.epochs` (resuming from `<out>/last.pt` with `cfg.resume`), keep the
    best-on-validation weights in `best.pt` (with `meta`, e.g. the class names), then test
    them once. `train_epoch(loop, net, loader, epoch)` runs an epoch; `validate(loop,
    loaders, history)` scores it (its `select` entry chooses the best epoch, ties going to
    the better `val_top1`; a `stop` entry ends training). Returns metrics, history and timing."""
    out = Path(cfg.out)  # claimed by the caller (train_classifier, a task's main)
    if rt.main:
        out.mkdir(parents=True, exist_ok=True)
    loop, schedule = make_loop(model, spec, cfg, rt, len(loaders.train))
    resumable = checkpoint.Resumable(loop.last_path, model=model, optimizer=loop.optimizer,
                                     scheduler=loop.scheduler, scaler=loop.scaler)
    saved = resumable.restore() if cfg.resume else None
    state = RunState(**saved) if saved else RunState()
    log = RunLog(out, rt, cfg.epochs)
    log.resumed(saved and loop.last_path, state)
    phases = Phases(model, spec, cfg, rt, frozen)
    for epoch in range(state.epoch, 0 if state.stopped else cfg.epochs):
        net = phases.net_for(epoch)
        loaders.train.sampler.set_epoch(epoch)
        start = time.perf_counter()
        sums = train_epoch(loop, net, loaders.train, epoch)
        state.train_seconds += time.perf_counter() - start
        state.train_images += int(sums[2])
        record = {"epoch": epoch + 1, "train_loss": (sums[0] / sums[2]).item(),
                  "train_top1": (sums[1] / sums[2]).item(), "val_top1": None,
                  "lr": cfg.lr * schedule.factor((epoch + 1) * schedule.steps_per_epoch - 1)}
        if loaders.val is not None:  # the plain model: DDP's forward would sync buffers
            record |= validate(loop, loaders, state.history)
        state.stopped = record.pop("stop", "")
        state.history.append(record)
        # a tie in `select` (robust accuracy 0 and 0, say) goes to the better clean
        # accuracy, then to the earlier epoch
        improved = not state.stopped and (
            loaders.val is None or state.best_epoch < 1
            or (record[select], record["val_top1"]) > (
                state.best_val_top1, state.history[state.best_epoch - 1]["val_top1"]))
        if improved:
            state.best_val_top1 = record[select] if loaders.val is not None else -1.0
            state.best_epoch = epoch + 1
        state.epoch = epoch + 1
        if rt.main:
            if improved:
                checkpoint.save_atomic({"model": model.state_dict(), "epoch": epoch + 1,
                                        "val_top1": record["val_top1"],
                                        "model_name": spec.name, **(meta or {})},
                                       out / "best.pt")
            resumable.save(**vars(state))
        log.epoch(record, state.stopped)
        if state.stopped:
            break
    return test_best(loop, loaders, state, select, log)


class RunLog:
    """What the main process says of a run: TensorBoard scalars (`train/loss`,
    `train/top1`, `val/top1`, `lr`, then `test/top1`) and one line an epoch."""

    def __init__(self, out: Path, rt: Runtime, epochs: int):
        self.epochs, self.writer = epochs, None
        if rt.main:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(out / "tb")

    def resumed(self, path: Path | None, state: RunState) -> None:
        if self.writer is not None and path:
            print(f"resumed from {path} at epoch {state.epoch}", flush=True)
        if self.writer is not None and state.stopped:
            print(f"stopped at epoch {state.epoch} already: {state.stopped}", flush=True)

    def epoch(self, record: dict, stopped: str) -> None:
        if self.writer is None:
            return
        step = record["epoch"]
        for key in ("train_loss", "train_top1", "val_top1", "lr"):
            if record[key] is not None:
                self.writer.add_scalar(key.replace("_", "/", 1) if key != "lr" else key,
                                       record[key], step)
        self.writer.flush()
        val = "" if record["val_top1"] is None else f" val_top1 {record['val_top1']:.4f}"
        print(f"{' ' * 70}\r" if sys.stdout.isatty() else "", end="")  # clear progress
        more = "".join(f" {key} {value:.4f}" for key, value in record.items()
                       if key not in ("epoch", "train_loss", "train_top1", "val_top1", "lr")
                       and isinstance(value, float))
        print(f"epoch {step}/{self.epochs} train_loss {record['train_loss']:.4f} "
              f"train_top1 {record['train_top1']:.4f}{val}{more}", flush=True)
        if stopped:
            print(f"stopped: {stopped}", flush=True)

    def test(self, top1: float, epoch: int) -> None:
        if self.writer is not None:
            self.writer.add_scalar("test/top1", top1, epoch)
            self.writer.close()


def test_best(loop: Loop, loaders: Loaders, state: RunState, select: str, log: RunLog) -> dict:
    """The test split, evaluated once, with the best-on-validation weights; its figures
    come from the predictions file's own float16 logits, so that the file reproduces them."""
    rt, out = loop.rt, loop.last_path.parent
    if state.best_epoch < 0:
        raise TrainingError(f"stopped at epoch {state.epoch} before any epoch was kept: "
                            f"{state.stopped}")
    if rt.world_size > 1:
        dist.barrier()  # best.pt is written by the main process
    loop.model.load_state_dict(checkpoint.load(out / "best.pt", "best.pt")["model"])
    test = loop.evaluate(loaders.test, outputs=True)
    records = loaders.test.dataset.records
    labels = np.array([r.label for r in records], dtype=np.int64)
    predicted = results.score_predictions(out, PREDICTIONS, [r.image_id or r.key for r in records],
                                          labels, test["logits"].numpy(),
                                          {"test_top1": 1, "test_top5": 5}, write=rt.main)
    logits = predicted.pop("logits")
    best = state.history[state.best_epoch - 1]
    selected = {} if select == "val_top1" else {f"best_{select}": best.get(select)}
    scores = results.merge(
        predicted,
        {"metrics": {"test_ece": stats.expected_calibration_error(logits, labels),
                     "best_val_top1": best.get("val_top1"), **selected,
                     "best_epoch": state.best_epoch}})
    log.test(scores["metrics"]["test_top1"], state.best_epoch)
    return {
        **scores,
        "test_count": test["count"],
        "test_logits": logits, "test_labels": labels,
        "history": state.history,
        "stopped": state.stopped,
        "timing": {"train_seconds": state.train_seconds,
                   "train_images_per_s": state.train_images / max(state.train_seconds, 1e-9),
                   "peak_mem_mb": peak_memory_mb(rt.device)},
        "channels_last": loop.channels_last,
    }


def count_gflops(model: nn.Module, image_size: int, device: torch.device) -> float:
    """Forward cost of one image in G multiply-adds, the unit of torchvision's model tables
    (resnet50 at 224: 4.09), counted by torch's FlopCounterMode, which counts 2 per
    multiply-add."""
    from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

    def cpu_attention(query, key, value, *args, out_shape=None, **kwargs):
        return sdpa_flop_count(query, key, value)  # the counter knows only the CUDA kernels

    # Autograd stays on: under no_grad nn.MultiheadAttention takes a fused fast path whose
    # projections the counter does not see (ViT-B/16 would count 11.3 G instead of 17.6 G).
    with models.evaluating(model), FlopCounterMode(display=False, custom_mapping={
            torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_attention},
            ) as counter:
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    return counter.get_total_flops() / 2 / 1e9


@torch.inference_mode()
def inference_speed(model: nn.Module, image_size: int, batch: int, rt: Runtime,
                    channels_last: bool) -> float:
    """Images per second of the model's forward pass alone (no data loading), at the run's
    batch size, precision and memory format, after a warm-up batch: the median batch of 10
    (5 on CPU), as one slow batch halved a 2-batch mean on CPU (lite0: 17 against 43)."""
    model.eval()
    x = torch.randn(batch, 3, image_size, image_size, device=rt.device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    seconds = []
    with torch.autocast(rt.device.type, rt.amp_dtype, enabled=rt.amp_dtype is not None):
        for _ in range(1 + (10 if rt.device.type == "cuda" else 5)):
            start = time.perf_counter()
            model(x)
            if rt.device.type == "cuda":
                torch.cuda.synchronize(rt.device)
            seconds.append(time.perf_counter() - start)
    return batch / statistics.median(seconds[1:])  # the first is the warm-up


def train_classifier(task: str, variant: str, flags: dict, cfg: TrainConfig, rt: Runtime,
                     classes: list[str], train: list[Record], val: list[Record],
                     test: list[Record], *, counts: dict | None = None,
                     measure_cost: bool = False, after=None, claim: bool = True,
                     whole_share: float = 0.0, train_epoch=train_epoch,
                     validate=validate_top1, select: str = "val_top1",
                     **task_metrics) -> dict:
    """`cfg`'s classifier trained on these splits by `fit`; the main process writes
    `<out>/metrics.json` (`flags`, the script's flags, recorded as they were; `counts` and
    `task_metrics` added) and prints the test score. `measure_cost` adds params_m, gflops,
    infer_images_per_s and the training cost (train_images_per_s, peak_mem_mb,
    train_seconds) to the metrics; `train_epoch`, `validate` and `select` go to `fit`;
    `after(model, spec, loaders, fitted)`, called with the tested model and `fit`'s result,
    returns more scores (`results.merge` of `results.scored` ones: metrics, intervals and
    predictions files; a score of the same name replaces fit's, and `test_logits`, if given,
    the logits the confusions are drawn from). `whole_share` goes to the training loader.
    Also writes the test split's confusions (per_class.csv and figures, `shared.figures`).
    `claim`: refuse an `--out` that holds a run (False: the caller claimed it and wrote
    there already)."""
    if claim:
        checkpoint.claim_run_folder(cfg.out, cfg.resume)
    model, spec = models.build_model(cfg.model, len(classes), cfg.weights,
                                     cfg.loader.image_size, cfg.drop_path)
    frozen = models.freeze_stages(model, spec, cfg.freeze_stages)
    loaders = make_loaders(train, val, test, cfg.loader, cuda=rt.device.type == "cuda",
                           whole_share=whole_share)
    result = fit(model, spec, loaders, cfg, rt, frozen=frozen,
                 meta={"classes": classes, "image_size": cfg.loader.image_size,
                       "mean": spec.mean, "std": spec.std,
                       # its evaluation view, for whoever evaluates it later
                       "resize_mode": cfg.loader.resize_mode,
                       "crop_ratio": cfg.loader.crop_ratio,
                       # what it learnt from: task 3's CAM boxes refuse a classifier that
                       # trained on their validation or test images
                       "train_keys": sorted({r.key for r in train})},
                 train_epoch=train_epoch, validate=validate, select=select)
    if after is not None:
        more = after(model, spec, loaders, result)
        result |= results.merge(result, more)
        result["test_logits"] = more.get("test_logits", result["test_logits"])
    if measure_cost:
        timing = result["timing"]
        task_metrics |= {
            "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
            "gflops": count_gflops(model, cfg.loader.image_size, rt.device),
            "train_images_per_s": timing["train_images_per_s"],
            "infer_images_per_s": inference_speed(model, cfg.loader.image_size,
                                                  cfg.loader.batch_size, rt,
                                                  result["channels_last"]),
            "peak_mem_mb": timing["peak_mem_mb"], "train_seconds": timing["train_seconds"]}
    if rt.main:
        data = {"classes": len(classes), "train": len(train), "val": len(val),
                "test": len(test), "test_evaluated": result["test_count"], **(counts or {})}
        record = results.make_record(task, variant, flags, rt, data, result, **task_metrics)
        figures.write_confusions(Path(cfg.out), classes, test, result["test_labels"],
                                 result["test_logits"])
        results.write_json(record, Path(cfg.out) / "metrics.json")
        print(f"test_top1 {result['metrics']['test_top1']:.4f} "
              f"test_top5 {result['metrics']['test_top5']:.4f} -> {cfg.out}/metrics.json")
    return result


def peak_memory_mb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
