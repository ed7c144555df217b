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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared/ without PYTHONPATH
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, any name

from shared import cli, errors  # argparse only: torch loads in main, so --help answers at once

TASK = "task4_dcgan"
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


def main(args: argparse.Namespace) -> None:
    import torch  # torch loads here
    from gan import (
        GanConfig,
        class_accuracy,
        frechet_distance,
        generate,
        kernel_inception_distance,
        lite0_features,
        load_images,
        load_judge,
        real_vs_generated,
        train_gan,
        write_synthetic,
    )

    from shared import checkpoint, data, engine, results

    rt = engine.init_runtime(args.device, args.amp, args.seed)
    if rt.world_size > 1:
        raise errors.TrainingError("task4_dcgan runs in one process (the GAN is small); "
                                   "start it without torchrun")
    out = checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args.dataset, args.data_root,
                                                  args.val_fraction, args.seed, args.limit)
    judge = load_judge(args.judge, index.classes)
    workers = data.loader_workers(args.workers, rt.device.type == "cuda")
    real = load_images(train, args.gan_size, workers)  # the train split alone
    real_labels = torch.tensor([r.label for r in train])
    G = train_gan(real, real_labels, len(index.classes), GanConfig.from_flags(vars(args)), rt,
                  out / "gan")

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
        record = results.task_record(TASK, "gan", vars(args), rt, quality,
                                     {"real_train": len(train), "generated": len(fake)},
                                     model=f"dcgan {args.gan_size} px", weights="none")
        results.write_json(record, out / "metrics.json")
        return
    cfg = engine.TrainConfig.from_flags(vars(args))
    engine.train_classifier(TASK, "dcgan", vars(args), cfg, rt, index.classes,
                            train + synthetic, val, test,
                            counts={"real_train": len(train), "synthetic": len(synthetic)},
                            claim=False, **quality)  # out holds the GAN: claimed above
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, parse_args())
