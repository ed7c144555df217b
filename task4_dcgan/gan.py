"""Task 4's GAN at work: the photos in memory, the DCGAN's training loop (BCE, Adam,
DiffAugment, resumable), sampling, the synthetic images on disk, and the measures of what
it made (FID and KID in lite0 features, the judge classifier's accuracy, a figure)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from dcgan import EMA, Discriminator, Generator
from diffaugment import diff_augment
from PIL import Image

from shared import checkpoint, cli, data, engine, models
from shared.data import Record

FID_SIZE = 224  # the generated and real images are compared in lite0 features at this size


def load_images(records: list[Record], size: int, workers: int) -> torch.Tensor:
    """The photos as uint8 (N, 3, size, size): short side resized, centre-cropped. Kept in
    memory, so 100 epochs decode each JPEG once."""
    import torchvision.transforms.v2 as T

    transform = T.Compose([T.Resize(size), T.CenterCrop(size), T.PILToTensor()])
    need = data.decode_need(False, size, "center-crop", crop_ratio=1.0)
    dataset = data.ImageDataset(records, transform, need)
    loader = torch.utils.data.DataLoader(dataset, batch_size=64, num_workers=workers)
    return torch.cat([images for images, _ in loader])


def to_unit(images: torch.Tensor) -> torch.Tensor:  # uint8 -> [-1, 1]
    return images.float() / 127.5 - 1


def no_augment(x: torch.Tensor) -> torch.Tensor:
    return x


def d_loss(d_real: torch.Tensor, d_fake: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """D's loss on its logits: BCE with real -> 1, generated -> 0, or the hinge loss
    (Lim & Ye 2017; SNGAN, BigGAN): relu(1 - D(x)) + relu(1 + D(G(z)))."""
    if kind == "hinge":
        return F.relu(1 - d_real).mean() + F.relu(1 + d_fake).mean()
    return (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))


def g_loss(d_gen: torch.Tensor, kind: str = "bce") -> torch.Tensor:
    """G's loss: the non-saturating BCE (make D say real), or the hinge's -D(G(z))."""
    if kind == "hinge":
        return -d_gen.mean()
    return F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))


def d_step(D: Discriminator, opt_d, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor,
           augment=no_augment, loss_kind: str = "bce"):
    """One discriminator update on real photos and generated images (G untouched), each seen
    through `augment` (DiffAugment). Returns the loss, mean D(x) and mean D(G(z)) (the
    sigmoid of the logits)."""
    d_real, d_fake = D(augment(real), y), D(augment(fake.detach()), y)
    loss = d_loss(d_real, d_fake, loss_kind)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return (loss.detach(), torch.sigmoid(d_real).mean().detach(),
            torch.sigmoid(d_fake).mean().detach())


def g_step(D: Discriminator, opt_g, fake: torch.Tensor, y: torch.Tensor,
           augment=no_augment, loss_kind: str = "bce") -> torch.Tensor:
    """One generator update: make D call the generated images real, through the same
    `augment` as D's step. Only G's optimiser steps."""
    loss = g_loss(D(augment(fake), y), loss_kind)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return loss.detach()


@dataclass(frozen=True)
class GanConfig:
    """The GAN's settings, named as train.py's flags (--gan-size, ...), with their defaults:
    the seed's BCE, Adam lr 2e-4 betas (0.5, 0.999), batch 100, 100 epochs; DiffAugment on;
    no spectral norm, no EMA of G, one learning rate."""
    gan_size: int = 32
    gan_epochs: int = 100
    gan_batch_size: int = 100
    gan_lr: float = 2e-4
    d_lr: float | None = None  # None: gan_lr; TTUR (Heusel et al. 2017): D's own, larger
    gan_beta1: float = 0.5
    gan_loss: str = "bce"
    spectral_norm: bool = False
    g_ema: float = 0.0  # the EMA's decay (0: off)
    fid_every: int = 0  # epochs between validation FID / KID readings (0: off)
    z_dim: int = 100
    gan_width: int = 64
    diffaugment: str = "color,translation,cutout"
    seed: int = 0
    resume: bool = False

    @classmethod
    def from_flags(cls, flags: dict) -> GanConfig:
        return cli.pick(cls, flags)


def train_gan(images: torch.Tensor, labels: torch.Tensor, num_classes: int, config: GanConfig,
              rt: engine.Runtime, out: Path, monitor=None) -> Generator:
    """The seed's recipe by default: BCE on D's logits (real 1, generated 0), G trained to
    make D say 1; Adam lr 2e-4, betas (0.5, 0.999); D sees every image through
    --diffaugment. `config` adds the hinge loss, spectral norm in D, D's own learning rate
    (TTUR) and an EMA of G, which is then the generator sampled and returned. `monitor(G)`,
    if given, scores the sampled generator (validation FID and KID) every
    `config.fid_every` epochs and after the last: the curve of the gate's value against
    generator steps, in `out/history.json` (every epoch's losses too) and TensorBoard.
    Resumes from `out/last.pt` (with `config.resume`)."""
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import save_image

    device = rt.device
    G = Generator(num_classes, config.gan_size, config.z_dim, config.gan_width).to(device)
    D = Discriminator(num_classes, config.gan_size, config.gan_width,
                      config.spectral_norm).to(device)
    fused = device.type == "cuda"  # one kernel for the whole update
    betas = (config.gan_beta1, 0.999)
    opt_g = torch.optim.Adam(G.parameters(), config.gan_lr, betas=betas, fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), config.d_lr or config.gan_lr, betas=betas,
                             fused=fused)
    ema = EMA(G, config.g_ema) if config.g_ema else None
    sampled = G if ema is None else ema.model  # the generator the samples come from
    seed = torch.Generator().manual_seed(config.seed)
    fixed_z = torch.randn(num_classes * 8, config.z_dim, generator=seed).to(device)
    fixed_y = torch.arange(num_classes).repeat_interleave(8).to(device)  # a row per class
    last = out / "last.pt"
    resumable = checkpoint.Resumable(last, G=G, D=D, opt_g=opt_g, opt_d=opt_d,
                                     **({} if ema is None else {"G_ema": ema.model}))
    saved = resumable.restore() if config.resume else None
    start_epoch, history = (saved["epoch"], saved["history"]) if saved else (0, [])
    if saved:
        print(f"GAN resumed from {last} at epoch {start_epoch}", flush=True)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(out / "tb")
    policy = () if config.diffaugment == "none" else tuple(config.diffaugment.split(","))

    def augment(x):
        return diff_augment(x, policy)

    n, batch = len(images), min(config.gan_batch_size, len(images))
    steps = n // batch  # the last partial batch is dropped (batch norm)
    images, labels = images.to(device), labels.to(device)  # uint8, small: copied once
    for epoch in range(start_epoch, config.gan_epochs):
        G.train()
        D.train()
        order = torch.randperm(n).to(device)
        sums = torch.zeros(4, device=device)
        guard = engine.LossGuard(device, "GAN loss", epoch + 1,
                                 f"the last good checkpoint is {last}")
        begin = time.perf_counter()
        for step in range(steps):
            index = order[step * batch:(step + 1) * batch]
            real, y = to_unit(images[index]), labels[index]
            flip = (torch.rand(len(index)) < 0.5).to(device, non_blocking=True)
            real = torch.where(flip[:, None, None, None], real.flip(-1), real)
            fake = G(torch.randn(len(index), config.z_dim, device=device), y)
            loss_d, d_real, d_fake = d_step(D, opt_d, real, fake, y, augment, config.gan_loss)
            loss_g = g_step(D, opt_g, fake, y, augment, config.gan_loss)
            if ema is not None:
                ema.update(G)
            guard.update(step, step + 1 == steps, loss_d, loss_g)
            sums += torch.stack([loss_d, loss_g, d_real, d_fake])
        record = dict(zip(("loss_d", "loss_g", "d_real", "d_fake"),
                          (sums / max(1, steps)).tolist(), strict=True))
        record["epoch"], record["seconds"] = epoch + 1, time.perf_counter() - begin
        record["g_steps"] = (epoch + 1) * steps
        if monitor is not None and config.fid_every and (
                (epoch + 1) % config.fid_every == 0 or epoch + 1 == config.gan_epochs):
            record |= monitor(sampled.eval())
            for key in ("val_fid", "val_kid", "gan_test_top1"):
                writer.add_scalar(f"gan/{key}", record[key], record["g_steps"])
        history.append(record)
        G.eval()
        with torch.no_grad():
            grid = (sampled(fixed_z, fixed_y) + 1) / 2
        save_image(grid, out / "samples" / f"epoch_{epoch + 1:03d}.png", nrow=8)
        for key, tag in (("loss_d", "gan/loss_D"), ("loss_g", "gan/loss_G"),
                         ("d_real", "gan/D(x)"), ("d_fake", "gan/D(G(z))")):
            writer.add_scalar(tag, record[key], epoch + 1)
        writer.add_images("gan/samples", grid, epoch + 1)
        writer.flush()
        resumable.save(epoch=epoch + 1, history=history)
        (out / "history.json").write_text(json.dumps(history, indent=1) + "\n")  # the curve
        print(f"GAN epoch {epoch + 1}/{config.gan_epochs} loss_D {record['loss_d']:.3f} "
              f"loss_G {record['loss_g']:.3f} D(x) {record['d_real']:.3f} "
              f"D(G(z)) {record['d_fake']:.3f}", flush=True)
    writer.close()
    return sampled.eval()


@torch.no_grad()
def generate(G: Generator, per_class: int, seed: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """`per_class` images of every class, uint8 (N, 3, S, S), and their labels."""
    z = torch.randn(G.num_classes * per_class, G.z_dim,
                    generator=torch.Generator().manual_seed(seed + 1))
    labels = torch.arange(G.num_classes).repeat_interleave(per_class)
    images = torch.cat([G(zb.to(device), yb.to(device)).cpu()
                        for zb, yb in zip(z.split(256), labels.split(256), strict=True)])
    return ((images + 1) * 127.5).round().clamp(0, 255).to(torch.uint8), labels


def write_synthetic(images: torch.Tensor, labels: torch.Tensor, size: int, folder: Path
                    ) -> list[Record]:
    """PNGs resized (bicubic) to the classifier's input, and `synthetic.txt` listing them
    (record keys `<folder name>/<file>`)."""
    folder.mkdir(parents=True, exist_ok=True)
    records, lines = [], []
    counts = {}
    for image, label in zip(images, labels.tolist(), strict=True):
        counts[label] = counts.get(label, 0) + 1
        name = f"class{label:03d}_{counts[label]:04d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).resize(
            (size, size), Image.Resampling.BICUBIC).save(folder / name)
        records.append(Record(f"{folder.name}/{name}", folder / name, label))
        lines.append(f"{name} {label}")
    (folder / "synthetic.txt").write_text("\n".join(lines) + "\n")
    return records


# ---------------------------------------------------------------------------- GAN quality


class Lite0Features:
    """Pooled 1280-d features of the ImageNet EfficientNet-Lite0 at 224 px of uint8 images
    (N, 3, S, S): what FID and KID compare. The network loads once, without drawing from
    the global RNG (built before the GAN trains, it leaves the GAN's draws as they were)."""

    def __init__(self, device, batch: int = 64):
        with torch.random.fork_rng(devices=[]):
            self.net, spec = models.build_model("tf_efficientnet_lite0", 1000, "imagenet")
        self.net.eval().to(device)
        self.device, self.batch = device, batch
        self.mean = torch.tensor(spec.mean, device=device)[:, None, None]
        self.std = torch.tensor(spec.std, device=device)[:, None, None]

    @torch.no_grad()
    def __call__(self, images: torch.Tensor) -> np.ndarray:
        out = []
        for chunk in images.split(self.batch):
            x = F.interpolate(chunk.to(self.device).float() / 255, size=FID_SIZE,
                              mode="bilinear", antialias=True, align_corners=False)
            out.append(self.net.forward_head(self.net.forward_features(
                (x - self.mean) / self.std), pre_logits=True).double().cpu())
        return torch.cat(out).numpy()



def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """||mu_a - mu_b||^2 + Tr(S_a) + Tr(S_b) - 2 Tr((S_a S_b)^1/2) between two feature sets.
    Tr((S_a S_b)^1/2) is the sum of the square roots of the eigenvalues of the symmetric
    S_a^1/2 S_b S_a^1/2, which stays exact when the covariances are singular (fewer images
    than feature dimensions), where a general matrix square root does not."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(w.clip(0))) @ v.T
    trace_root = np.sqrt(np.linalg.eigvalsh(root_a @ cov_b @ root_a).clip(0)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * trace_root)


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subsets: int = 100,
                              subset_size: int = 1000, seed: int = 0) -> tuple[float, float]:
    """KID (Binkowski et al. 2018): the unbiased estimate of the squared MMD between two
    feature sets with the cubic kernel k(x, y) = (x.y / d + 1)^3, averaged over `subsets`
    random subsets of min(`subset_size`, both sizes) from each; returns its mean and its
    standard deviation over the subsets. Unlike FID it is unbiased at small sample sizes."""
    rng = np.random.default_rng(seed)
    m = min(subset_size, len(a), len(b))
    if m < 2:
        raise ValueError(f"KID needs at least 2 images a set, got {len(a)} and {len(b)}")
    d = a.shape[1]
    estimates = []
    for _ in range(subsets):
        x = a[rng.choice(len(a), m, replace=False)]
        y = b[rng.choice(len(b), m, replace=False)]
        k_xx, k_yy, k_xy = ((p @ q.T / d + 1) ** 3 for p, q in ((x, x), (y, y), (x, y)))
        within = ((k_xx.sum() - np.trace(k_xx)) + (k_yy.sum() - np.trace(k_yy))) / (m * (m - 1))
        estimates.append(within - 2 * k_xy.mean())
    return float(np.mean(estimates)), float(np.std(estimates))


def real_vs_generated(real: torch.Tensor, real_labels: torch.Tensor, fake: torch.Tensor,
                      fake_labels: torch.Tensor, path: Path, classes: int = 8,
                      per_class: int = 6) -> None:
    """A row per class (the first `classes`): `per_class` of its training photos, a gap, then
    as many of its generated images, all at the GAN's size."""
    from torchvision.utils import make_grid, save_image

    rows = []
    for label in range(min(classes, int(real_labels.max()) + 1)):
        photos = real[real_labels == label][:per_class]
        generated = fake[fake_labels == label][:per_class]
        if len(photos) < per_class:  # a class with few photos: fill with blanks
            photos = torch.cat([photos, photos.new_full((per_class - len(photos),
                                                         *photos.shape[1:]), 255)])
        blank = photos.new_full((1, *photos.shape[1:]), 255)
        rows.append(torch.cat([photos, blank, generated[:per_class]]))
    grid = make_grid(torch.cat(rows).float() / 255, nrow=2 * per_class + 1, padding=2,
                     pad_value=1.0)
    save_image(grid, path)


def load_judge(path: Path, classes: list[str]):
    """Task 1-2's classifier (its best.pt) that judges the generated images, loaded before
    the GAN trains so that a bad file stops the run at once; None, said aloud, without one."""
    if not path.is_file():
        print(f"gen_class_acc not measured: no task 1-2 classifier at {path} (train one "
              "with task1_2_finetune/train.py, or pass --judge PATH)", flush=True)
        return None
    return models.load_classifier(path, classes, "--judge")


@torch.no_grad()
def class_accuracy(judge, images: torch.Tensor, labels: torch.Tensor, device) -> float | None:
    """Accuracy of the judge (`load_judge`) on generated images against the class each was
    generated for; None without a judge."""
    if judge is None:
        return None
    net, _, meta = judge
    net.to(device)
    mean = torch.tensor(meta["mean"], device=device)[:, None, None]
    std = torch.tensor(meta["std"], device=device)[:, None, None]
    correct = 0
    for chunk, y in zip(images.split(64), labels.split(64), strict=True):
        x = F.interpolate(chunk.to(device).float() / 255, size=meta["image_size"],
                          mode="bicubic", align_corners=False).clamp(0, 1)
        correct += int((net((x - mean) / std).argmax(1).cpu() == y).sum())
    return correct / len(labels)


GAN_TEST_TIMES_CHANCE = 10


def gan_test_gate(accuracy: float | None, classes: int) -> dict:
    """Table 3's gate (did the GAN make recognisable images?): the generated images' class
    accuracy under a classifier trained on real photos at the GAN's resolution (GAN-test),
    at least 10 x chance; None: not measured (no validation split)."""
    from shared import results

    name = "GAN-test: generated images' accuracy, x chance"
    times = None if accuracy is None else accuracy * classes
    return results.gate(name if times is not None else f"{name}: no validation split",
                        times, GAN_TEST_TIMES_CHANCE,
                        times is not None and times >= GAN_TEST_TIMES_CHANCE)
