"""Task 4: a class-conditional DCGAN whose samples augment the classifier's training set
(Table 3).

    python task4_dcgan/train.py --dataset dog                 # GAN, samples, classifier
    python task4_dcgan/train.py --dataset bird --gan-size 64 --synthetic-per-class 20

1. The GAN (dcgan.py) trains on the train split only (never on validation or test images),
   at --gan-size pixels (each photo resized on its short side and centre-cropped), with the
   seed's settings: BCE, Adam lr 2e-4 beta1 0.5, batch 100, 100 epochs; and DiffAugment
   (diffaugment.py, --diffaugment): every image D sees, real or generated, in D's step and
   in G's, goes through random colour, translation and cutout, so that D cannot memorise
   some 26 photos a class. Per epoch:
   `<out>/gan/samples/epoch_NNN.png` (a fixed-noise grid, one row per class), TensorBoard
   losses, D(x), D(G(z)) and the grid; `<out>/gan/last.pt` for --resume. The last epoch's
   generator is used (the seed kept the one with the lowest G loss, which says little about
   image quality in a GAN).
2. K = --synthetic-per-class images per class, resized to the classifier's --image-size, go
   to `<out>/synthetic/` with a list file `synthetic.txt` (`<file> <label>` per line).
3. GAN quality, in metrics.json: `fid`, the Frechet distance between the train photos and the
   generated images (both at --gan-size, then 224 px) in the pooled 1280-d features of the
   ImageNet EfficientNet-Lite0 (its weights install offline); `kid` and `kid_std`, the
   unbiased kernel distance in the same features, mean and spread over 100 subsets (FID is
   biased at these sizes); `gen_class_acc`, the accuracy of task 1-2's classifier (--judge,
   its best.pt) on the generated images against the class each was generated for; and
   `<out>/gan/real_vs_generated.png`, training photos and generated images of the same
   classes side by side.
4. The classifier (task 1-2's, same flags and --recipe) trains on the real train images plus
   the synthetic ones; validation and test stay real.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `shared` without PYTHONPATH

from shared import cli, errors  # noqa: E402  (argparse only)

TASK = "task4_dcgan"
FID_SIZE = 224
GAN_SIZES = (32, 64, 128)  # dcgan.SIZES (a test checks), here so that --help needs no torch


DIFFAUGMENT = ("color", "translation", "cutout")  # diffaugment.POLICIES (a test checks)


def diffaugment_policy(text: str) -> str:
    """--diffaugment: 'none' or a comma-separated list of DIFFAUGMENT."""
    parts = text.split(",")
    if text != "none" and not all(p in DIFFAUGMENT for p in parts):
        raise argparse.ArgumentTypeError(f"expected none or a comma-separated list of "
                                         f"{', '.join(DIFFAUGMENT)}, got {text!r}")
    return text


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    group = parser.add_argument_group("GAN")
    group.add_argument("--gan-size", type=int, choices=GAN_SIZES, default=32,
                       help="the generated images' side in pixels")
    group.add_argument("--gan-epochs", type=cli.positive_int, default=100)
    group.add_argument("--gan-batch-size", type=cli.positive_int, default=100)
    group.add_argument("--gan-lr", type=cli.positive_float, default=2e-4)
    group.add_argument("--z-dim", type=cli.positive_int, default=100)
    group.add_argument("--gan-width", type=cli.positive_int, default=64,
                       help="channels of G's last and D's first layer")
    group.add_argument("--diffaugment", type=diffaugment_policy,
                       default="color,translation,cutout",
                       help="DiffAugment: the augmentations every image D sees goes through, "
                            "real and generated, in D's and G's steps (none: off)")
    group.add_argument("--synthetic-per-class", type=cli.nonnegative_int, default=10, metavar="K")
    group.add_argument("--gan-only", action="store_true",
                       help="train and measure the GAN (FID, KID, gen_class_acc, the figure), "
                            "then stop: no synthetic images, no classifier")
    group.add_argument("--judge", type=Path,
                       help="task 1-2's best.pt, for gen_class_acc (default "
                            "results/task1_2_finetune/<dataset>/pretrained/best.pt)")
    args = cli.parse_with_recipes(parser, argv)
    args.judge = args.judge or Path("results", "task1_2_finetune", args.dataset, "pretrained",
                                    "best.pt")
    args.out = args.out or Path("results", TASK, args.dataset, "dcgan")
    return args


if __name__ == "__main__":  # --help and bad flags answer before torch loads below
    ARGS = parse_args()

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402

from shared import checkpoint, data, engine, models, results  # noqa: E402
from shared.data import Record  # noqa: E402
from task4_dcgan.dcgan import Discriminator, Generator  # noqa: E402
from task4_dcgan.diffaugment import diff_augment  # noqa: E402

# ------------------------------------------------------------------------------------- GAN


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


def d_step(D: Discriminator, opt_d, real: torch.Tensor, fake: torch.Tensor, y: torch.Tensor,
           augment=no_augment):
    """One discriminator update, BCE with real photos -> 1, generated -> 0 (G untouched),
    each seen through `augment` (DiffAugment). Returns the loss, mean D(x) and mean D(G(z))."""
    d_real, d_fake = D(augment(real), y), D(augment(fake.detach()), y)
    loss = (F.binary_cross_entropy_with_logits(d_real, torch.ones_like(d_real))
            + F.binary_cross_entropy_with_logits(d_fake, torch.zeros_like(d_fake)))
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return (loss.detach(), torch.sigmoid(d_real).mean().detach(),
            torch.sigmoid(d_fake).mean().detach())


def g_step(D: Discriminator, opt_g, fake: torch.Tensor, y: torch.Tensor,
           augment=no_augment) -> torch.Tensor:
    """One generator update: make D call the generated images real (the non-saturating
    loss), through the same `augment` as D's step. Only G's optimiser steps."""
    d_gen = D(augment(fake), y)
    loss = F.binary_cross_entropy_with_logits(d_gen, torch.ones_like(d_gen))
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return loss.detach()


def train_gan(images: torch.Tensor, labels: torch.Tensor, num_classes: int, args,
              rt: engine.Runtime, out: Path) -> Generator:
    """The seed's recipe: BCE on D's logits (real 1, generated 0), G trained to make D say 1;
    Adam lr 2e-4, betas (0.5, 0.999); D sees every image through --diffaugment. Resumes from
    `out/last.pt`."""
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import save_image

    device = rt.device
    G = Generator(num_classes, args.gan_size, args.z_dim, args.gan_width).to(device)
    D = Discriminator(num_classes, args.gan_size, args.gan_width).to(device)
    fused = device.type == "cuda"  # one kernel for the whole update
    opt_g = torch.optim.Adam(G.parameters(), args.gan_lr, betas=(0.5, 0.999), fused=fused)
    opt_d = torch.optim.Adam(D.parameters(), args.gan_lr, betas=(0.5, 0.999), fused=fused)
    seed = torch.Generator().manual_seed(args.seed)
    fixed_z = torch.randn(num_classes * 8, args.z_dim, generator=seed).to(device)
    fixed_y = torch.arange(num_classes).repeat_interleave(8).to(device)  # a row per class
    last = out / "last.pt"
    resumable = checkpoint.Resumable(last, G=G, D=D, opt_g=opt_g, opt_d=opt_d)
    saved = resumable.restore() if args.resume else None
    start_epoch, history = (saved["epoch"], saved["history"]) if saved else (0, [])
    if saved:
        print(f"GAN resumed from {last} at epoch {start_epoch}", flush=True)
    (out / "samples").mkdir(parents=True, exist_ok=True)
    writer = SummaryWriter(out / "tb")
    policy = () if args.diffaugment == "none" else tuple(args.diffaugment.split(","))

    def augment(x):
        return diff_augment(x, policy)

    n, batch = len(images), min(args.gan_batch_size, len(images))
    steps = n // batch  # the last partial batch is dropped (batch norm)
    images, labels = images.to(device), labels.to(device)  # uint8, small: copied once
    for epoch in range(start_epoch, args.gan_epochs):
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
            fake = G(torch.randn(len(index), args.z_dim, device=device), y)
            loss_d, d_real, d_fake = d_step(D, opt_d, real, fake, y, augment)
            loss_g = g_step(D, opt_g, fake, y, augment)
            guard.update(step, step + 1 == steps, loss_d, loss_g)
            sums += torch.stack([loss_d, loss_g, d_real, d_fake])
        record = dict(zip(("loss_d", "loss_g", "d_real", "d_fake"),
                          (sums / max(1, steps)).tolist(), strict=True))
        record["epoch"], record["seconds"] = epoch + 1, time.perf_counter() - begin
        history.append(record)
        G.eval()
        with torch.no_grad():
            grid = (G(fixed_z, fixed_y) + 1) / 2
        save_image(grid, out / "samples" / f"epoch_{epoch + 1:03d}.png", nrow=8)
        for key, tag in (("loss_d", "gan/loss_D"), ("loss_g", "gan/loss_G"),
                         ("d_real", "gan/D(x)"), ("d_fake", "gan/D(G(z))")):
            writer.add_scalar(tag, record[key], epoch + 1)
        writer.add_images("gan/samples", grid, epoch + 1)
        writer.flush()
        resumable.save(epoch=epoch + 1, history=history)
        print(f"GAN epoch {epoch + 1}/{args.gan_epochs} loss_D {record['loss_d']:.3f} "
              f"loss_G {record['loss_g']:.3f} D(x) {record['d_real']:.3f} "
              f"D(G(z)) {record['d_fake']:.3f}", flush=True)
    writer.close()
    G.eval()
    return G


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
    """PNGs resized (bicubic) to the classifier's input, and `synthetic.txt` listing them."""
    folder.mkdir(parents=True, exist_ok=True)
    records, lines = [], []
    counts = {}
    for image, label in zip(images, labels.tolist(), strict=True):
        counts[label] = counts.get(label, 0) + 1
        name = f"class{label:03d}_{counts[label]:04d}.png"
        Image.fromarray(image.permute(1, 2, 0).numpy()).resize(
            (size, size), Image.Resampling.BICUBIC).save(folder / name)
        records.append(Record(f"synthetic/{name}", folder / name, label))
        lines.append(f"{name} {label}")
    (folder / "synthetic.txt").write_text("\n".join(lines) + "\n")
    return records


# ---------------------------------------------------------------------------- GAN quality


@torch.no_grad()
def lite0_features(image_sets: list[torch.Tensor], device, batch: int = 64
                   ) -> list[np.ndarray]:
    """Pooled 1280-d features of the ImageNet EfficientNet-Lite0 at 224 px, one array per
    set of uint8 images (the network is loaded once)."""
    net, spec = models.build_model("tf_efficientnet_lite0", 1000, "imagenet")
    net.eval().to(device)
    mean = torch.tensor(spec.mean, device=device)[:, None, None]
    std = torch.tensor(spec.std, device=device)[:, None, None]

    def features(images):
        out = []
        for chunk in images.split(batch):
            x = F.interpolate(chunk.to(device).float() / 255, size=FID_SIZE, mode="bilinear",
                              antialias=True, align_corners=False)
            out.append(net.forward_head(net.forward_features((x - mean) / std),
                                        pre_logits=True).double().cpu())
        return torch.cat(out).numpy()
    return [features(images) for images in image_sets]


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


def main(args: argparse.Namespace) -> None:
    rt = engine.init_runtime(args)
    if rt.world_size > 1:
        raise errors.TrainingError("task4_dcgan runs in one process (the GAN is small); "
                                   "start it without torchrun")
    out = checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args)
    judge = load_judge(args.judge, index.classes)
    workers = data.loader_workers(args, rt.device.type == "cuda")
    real = load_images(train, args.gan_size, workers)  # the train split alone
    real_labels = torch.tensor([r.label for r in train])
    G = train_gan(real, real_labels, len(index.classes), args, rt, out / "gan")

    # FID compares as many generated images as there are real ones (at least K per class);
    # the first K of each class augment the classifier.
    k = args.synthetic_per_class
    per_class = max(k, -(-len(train) // len(index.classes)))
    fake, fake_labels = generate(G, per_class, args.seed, rt.device)
    keep = torch.arange(len(fake)) % per_class < k
    synthetic = [] if args.gan_only else write_synthetic(fake[keep], fake_labels[keep],
                                                         args.image_size, out / "synthetic")
    real_vs_generated(real, real_labels, fake, fake_labels, out / "gan" / "real_vs_generated.png")
    real_features, fake_features = lite0_features([real, fake], rt.device)
    kid, kid_std = kernel_inception_distance(real_features, fake_features, seed=args.seed)
    quality = {"fid": frechet_distance(real_features, fake_features), "kid": kid,
               "kid_std": kid_std,
               "gen_class_acc": class_accuracy(judge, fake, fake_labels, rt.device)}
    print(f"FID {quality['fid']:.2f}, KID {kid:.4f} +- {kid_std:.4f} (lite0 features, "
          f"{len(real)} real, {len(fake)} generated); gen_class_acc "
          f"{quality['gen_class_acc']}", flush=True)
    if args.gan_only:
        record = results.task_record(TASK, "gan", args, rt, quality,
                                     {"real_train": len(train), "generated": len(fake)},
                                     model=f"dcgan {args.gan_size} px", weights="none")
        results.write_json(record, out / "metrics.json")
        return
    engine.train_classifier(TASK, "dcgan", args, rt, index.classes, train + synthetic, val,
                            test, {"real_train": len(train), "synthetic": len(synthetic)},
                            claim=False, **quality)  # out holds the GAN: claimed above
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, ARGS)
