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
   Against the validation photos, which the GAN never saw: `val_fid`, `val_kid` (what runs
   are compared by). GAN-test and GAN-train (Shmelkov et al. 2018) at the GAN's own size: a
   classifier trained on the real train photos at --gan-size (`<out>/gan_test/`, before the
   GAN) scores the generated images (`gan_test_top1`) beside the real validation photos
   (`gan_test_real_val_top1`); one trained on generated images alone (`<out>/gan_train/`)
   scores the real validation photos (`gan_train_top1`). Every image both classifiers see,
   real or generated, is at --gan-size (what the GAN makes), then resized to
   --gan-test-size for the network. --fid-every N reads val FID, KID
   and GAN-test every N GAN epochs: `<out>/gan/history.json`, the curve against G's steps.
4. The gates (`gates` in metrics.json; Table 3 gives no verdict on a GAN that failed them):
   GAN-test at least 10 x chance, and, with DiffAugment, a validation FID below the same
   GAN's without it (--fid-baseline, that run's folder).
5. The classifier (task 1-2's, same flags and --recipe) trains on the real train images plus
   the synthetic ones; validation and test stay real.

The GAN's recipe: --gan-loss bce (the seed's) or hinge, --spectral-norm in D, --d-lr for
D's own learning rate (TTUR) with --gan-beta1, --g-ema to sample from an average of G's
weights, --diffaugment; all written out in dcgan.py and gan.py.
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
    group.add_argument("--gan-lr", type=cli.positive_float, default=2e-4,
                       help="G's learning rate (and D's, without --d-lr)")
    group.add_argument("--d-lr", type=cli.positive_float,
                       help="D's own learning rate (TTUR, e.g. 4e-4 against G's 1e-4)")
    group.add_argument("--gan-beta1", type=cli.nonnegative_float, default=0.5,
                       help="Adam's beta1 for both (TTUR and SNGAN use 0)")
    group.add_argument("--gan-loss", choices=("bce", "hinge"), default="bce")
    group.add_argument("--spectral-norm", action="store_true",
                       help="spectral normalisation of every weight of D (and no batch norm)")
    group.add_argument("--g-ema", type=cli.probability, default=0.0, metavar="DECAY",
                       help="sample from an exponential moving average of G's weights with "
                            "this decay, e.g. 0.999 (0: off)")
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
    group.add_argument("--fid-every", type=cli.nonnegative_int, default=0, metavar="EPOCHS",
                       help="read validation FID, KID and GAN-test every this many GAN "
                            "epochs (and after the last), into the history and TensorBoard: "
                            "the curve against generator steps (0: only at the end)")
    group.add_argument("--fid-baseline", type=Path, metavar="RUN",
                       help="the same GAN's run without DiffAugment (its folder): the gate "
                            "asks for a validation FID below its")
    group.add_argument("--gan-test-size", type=cli.positive_int, default=128, metavar="PX",
                       help="GAN-test's and GAN-train's classifiers see every image at "
                            "--gan-size, resized to this for the network (lite0 reads 32-px "
                            "inputs poorly: task4_dcgan/README.md)")
    group.add_argument("--judge", type=Path,
                       help="task 1-2's best.pt, for gen_class_acc (default "
                            "results/task1_2_finetune/<dataset>/pretrained/best.pt)")
    args = cli.parse_with_recipes(parser, argv)
    args.judge = args.judge or Path("results", "task1_2_finetune", args.dataset, "pretrained",
                                    "best.pt")
    args.out = args.out or Path("results", TASK, args.dataset, "dcgan")
    if args.gan_test_size < args.gan_size:
        parser.error(f"--gan-test-size {args.gan_test_size}: expected at least --gan-size "
                     f"({args.gan_size}); the classifiers must see all the GAN's pixels")
    return args


def main(args: argparse.Namespace) -> None:
    import torch  # torch loads here
    from gan import (
        GanConfig,
        Lite0Features,
        class_accuracy,
        frechet_distance,
        generate,
        kernel_inception_distance,
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
    # FID compares as many generated images as there are real ones (at least K per class);
    # the first K of each class augment the classifier.
    k = args.synthetic_per_class
    per_class = max(k, -(-len(train) // len(index.classes)))
    features = Lite0Features(rt.device)
    # against photos the GAN never saw: what runs are compared by, and the curve
    val_images = load_images(val, args.gan_size, workers) if val else None
    val_features = features(val_images) if val else None
    val_labels = torch.tensor([r.label for r in val])

    # GAN-test's classifier depends on the real photos alone: trained first, it scores the
    # generated images at every point of the curve as well as at the end. Its validation
    # photos, at the GAN's size, are GAN-train's test images too.
    gan_val = write_synthetic(val_images, val_labels, args.gan_size,
                              out / "gan_test_images" / "val") if val else []
    gan_test, gan_test_real = real_classifier_at_gan_size(args, rt, index.classes, real,
                                                          real_labels, gan_val, out)

    def against_val(fake, fake_labels) -> dict:
        fake_features = features(fake)
        kid, kid_std = kernel_inception_distance(val_features, fake_features, seed=args.seed)
        return {"val_fid": frechet_distance(val_features, fake_features), "val_kid": kid,
                "val_kid_std": kid_std,
                "gan_test_top1": class_accuracy(gan_test, fake, fake_labels, rt.device)}

    G = train_gan(real, real_labels, len(index.classes), GanConfig.from_flags(vars(args)), rt,
                  out / "gan", monitor=None if val_features is None else
                  lambda G: against_val(*generate(G, per_class, args.seed, rt.device)))

    fake, fake_labels = generate(G, per_class, args.seed, rt.device)
    keep = torch.arange(len(fake)) % per_class < k
    synthetic = [] if args.gan_only else write_synthetic(fake[keep], fake_labels[keep],
                                                         args.image_size, out / "synthetic")
    real_vs_generated(real, real_labels, fake, fake_labels, out / "gan" / "real_vs_generated.png")
    real_features, fake_features = features(real), features(fake)
    kid, kid_std = kernel_inception_distance(real_features, fake_features, seed=args.seed)
    quality = {"fid": frechet_distance(real_features, fake_features), "kid": kid,
               "kid_std": kid_std,
               "gen_class_acc": class_accuracy(judge, fake, fake_labels, rt.device)}
    curve_end = history(out)[-1]  # the last epoch's record: G's steps, the curve's end
    if val_features is not None:
        # --fid-every's last point scored these same seeded images: read, not recomputed
        quality |= ({k: curve_end[k] for k in ("val_fid", "val_kid", "val_kid_std",
                                               "gan_test_top1")}
                    if "val_fid" in curve_end else against_val(fake, fake_labels))
    print(f"FID {quality['fid']:.2f}, KID {kid:.4f} +- {kid_std:.4f} (lite0 features, "
          f"{len(real)} real, {len(fake)} generated); gen_class_acc "
          f"{quality['gen_class_acc']}", flush=True)
    gan_scores = gan_train(args, rt, index.classes, gan_val, fake, fake_labels, out,
                           {"gan_test_top1": quality.get("gan_test_top1"),
                            "gan_test_real_val_top1": gan_test_real},
                           curve_end["g_steps"])
    quality |= gan_scores["metrics"]
    gates = results.merge(gan_scores, fid_gate(args, quality))["gates"]
    if args.gan_only:
        record = results.task_record(TASK, "gan", vars(args), rt, quality,
                                     {"real_train": len(train), "generated": len(fake)},
                                     model=f"dcgan {args.gan_size} px", weights="none",
                                     gates=gates)
        results.write_json(record, out / "metrics.json")
        return
    cfg = engine.TrainConfig.from_flags(vars(args))
    engine.train_classifier(TASK, "dcgan", vars(args), cfg, rt, index.classes,
                            train + synthetic, val, test,
                            counts={"real_train": len(train), "synthetic": len(synthetic)},
                            claim=False, after=lambda *_: {"gates": gates},
                            **quality)  # out holds the GAN: claimed above
    engine.shutdown(rt)


def real_classifier_at_gan_size(args, rt, classes, real, real_labels, val, out: Path):
    """GAN-test's classifier (Shmelkov et al. 2018), at the GAN's own resolution so that
    resolution is not what fails: trained on the real train photos as the GAN sees them
    (`real`, at --gan-size; written to `<out>/gan_test_images/train/`), resized to
    --gan-test-size, the common flags otherwise, into `<out>/gan_test/`, without validation
    (last epoch): the validation photos at --gan-size (`val`) are what it is scored on (its
    `test_top1`, Table 3's `gan_test_real_val_top1`). A resumed run reuses a finished one
    whose checkpoint is there (a record carried without it, docs/results.md, trains again).
    Returns it as a judge (gan.load_judge) and that accuracy; Nones without a validation
    split."""
    import json

    from gan import load_judge, write_synthetic

    from shared import engine

    if not val:
        return None, None
    flags = {**vars(args), "image_size": args.gan_test_size, "out": out / "gan_test"}
    finished = out / "gan_test" / "metrics.json"
    if finished.is_file() and (out / "gan_test" / "best.pt").is_file():
        metrics = json.loads(finished.read_text())["metrics"]
    else:
        train = write_synthetic(real, real_labels, args.gan_size,
                                out / "gan_test_images" / "train")
        metrics = engine.train_classifier(TASK, "gan_test", flags,
                                          engine.TrainConfig.from_flags(flags), rt, classes,
                                          train, [], val)["metrics"]
    return load_judge(out / "gan_test" / "best.pt", classes), metrics["test_top1"]


def history(out: Path) -> list[dict]:
    """The GAN's per-epoch record (`<out>/gan/history.json`): losses, G's steps, the curve."""
    import json

    return json.loads((out / "gan" / "history.json").read_text())


def gan_train(args, rt, classes, val, fake, fake_labels, out: Path, gan_test: dict,
              g_steps: int) -> dict:
    """GAN-train (Shmelkov et al. 2018): a classifier trained on the generated images alone
    (`<out>/gan_train/`, last epoch; as GAN-test's, at --gan-size resized to
    --gan-test-size) scores the real validation photos at --gan-size (`val`,
    `gan_train_top1`); with GAN-test's figures beside it (`gan_test`: `gan_test_top1`, and
    `gan_test_real_val_top1`, the real photos' accuracy at this size) and the gate:
    GAN-test at least 10 x chance.
    `<out>/gan_train/generator.json` names the generator (its steps) whose images it
    learns from: a run resumed with more --gan-epochs trains it again from scratch."""
    import json
    import shutil

    from gan import gan_test_gate, write_synthetic

    from shared import engine

    if not val:
        return {"gates": [gan_test_gate(None, len(classes))]}
    folder, generator = out / "gan_train", {"g_steps": g_steps}
    marker = folder / "generator.json"
    if folder.is_dir() and (not marker.is_file() or json.loads(marker.read_text()) != generator):
        print(f"{folder} learnt from an earlier generator's images: trained again", flush=True)
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    marker.write_text(json.dumps(generator) + "\n")
    # resume: the folder holds the marker (and a killed run's last.pt for this generator)
    flags = {**vars(args), "image_size": args.gan_test_size, "out": folder, "resume": True}
    images = write_synthetic(fake, fake_labels, args.gan_size, out / "gan_train_images")
    result = engine.train_classifier(TASK, "gan_train", flags,
                                     engine.TrainConfig.from_flags(flags), rt, classes, images,
                                     [], val)
    scores = {**gan_test, "gan_train_top1": result["metrics"]["test_top1"]}
    return {"metrics": scores, "gates": [gan_test_gate(gan_test["gan_test_top1"],
                                                       len(classes))]}


def fid_gate(args, quality: dict) -> dict:
    """The gate's second half: validation FID below the same GAN's without DiffAugment
    (--fid-baseline); a run without DiffAugment is that baseline and has none."""
    import json

    from shared import results

    if args.diffaugment == "none":
        return {}
    name = "val FID below the run without DiffAugment"
    baseline = None
    if args.fid_baseline is not None:
        path = args.fid_baseline / "metrics.json"
        if not path.is_file():
            raise errors.DataError(f"--fid-baseline {args.fid_baseline}: no metrics.json "
                                   "(expected a finished task 4 run with --diffaugment none)")
        baseline = json.loads(path.read_text())["metrics"].get("val_fid")
    value = quality.get("val_fid")
    if baseline is None or value is None:
        missing = "no --fid-baseline run" if baseline is None else "no validation split"
        return {"gates": [results.gate(f"{name}: {missing}", None, 0, False)]}
    return {"gates": [results.gate(name, value, baseline, value < baseline)]}


if __name__ == "__main__":
    cli.run(main, parse_args())
