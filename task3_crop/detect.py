"""Task 3, step 1: one box for every image of every split, from a localiser: by default a
one-class "object" detector (MMDetection Faster R-CNN) trained on the true boxes of the train
split; or, needing no boxes at all, a trained classifier's class activation map, or the
fixed centred box every localiser must beat.

    python task3_crop/detect.py --dataset bird                      # the seed's detector
    python task3_crop/detect.py --dataset dog --detector small      # CPU-sized
    python task3_crop/detect.py --dataset bird --detector-weights faster_rcnn_coco.pth
    python task3_crop/detect.py --dataset bird --localiser cam --classifier best.pt  # task 1-2's
    python task3_crop/detect.py --dataset bird --localiser centre --centre-area 0.5

`--localiser cam`: Grad-CAM (shared/cam.py) of the classifier's last stage for its predicted
class, on the letterboxed photo (all of it in view), upsampled to the input; the box of the
largest 8-connected region at or above `--cam-threshold` of the map's maximum, mapped back to
the photo's pixels. The classifier must not have trained on this run's validation or test
images (its best.pt lists its training images). `--localiser centre`: the centred box of the
photo's aspect ratio covering `--centre-area` of it. Either setting, when not given, is the
one with the best validation CorLoc where validation has true boxes (never test), else the
default (CAM: 0.2 of the maximum, as Zhou et al. 2016; centre: half the area); metrics.json
has CorLoc at it and MaxBoxAcc (the best CorLoc over every setting tried, Choe et al. 2020)
where test has true boxes, None otherwise.

`--detector seed` is the seed's `faster-rcnn_r101_fpn_2x_coco` (ImageNet ResNet-101 backbone,
1333x800 input); `--detector small` is a ResNet-18 FPN with 64 channels at --image-scale 224,
for CPU runs and the demo. Only the train split (without the validation images carved from
it, as in train.py) trains the detector; the boxes of CUB `bounding_boxes.txt` and every dog
of each Stanford Dogs XML become a COCO json. `--detector-weights` starts from a full MMDetection
checkpoint (COCO-trained ones already find birds and dogs; their 80-class head is replaced).

Writes to --out (default results/task3_crop/<dataset>/detector): boxes.json (the top box per
image, or null), metrics.json (CorLoc and mean IoU on val and test, timing), detector.pth (the
trained weights, for --detector-weights) and mmdet/ (checkpoints, logs, TensorBoard).
--resume continues an interrupted training from its last epoch.
"""

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared/ without PYTHONPATH
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, any name

from shared import cli, errors  # argparse only: torch loads in main, so --help answers at once

TASK = "task3_crop"
DETECTORS = {  # defaults per detector; flags override
    "seed": {"depth": 101, "channels": None, "image_scale": (1333, 800), "epochs": 24,
             "batch_size": 8, "lr": 0.01},
    "small": {"depth": 18, "channels": 64, "image_scale": (224, 224), "epochs": 12,
              "batch_size": 8, "lr": 0.02},
}
DEFAULT_CAM_THRESHOLD = 0.2  # Zhou et al. 2016: 20% of the map's maximum


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__, cli.add_dataset_args(argparse.ArgumentParser(
        add_help=False)))
    per_detector = {key: ", ".join(f"{name} {values[key]}" for name, values in DETECTORS.items())
                    for key in ("image_scale", "epochs", "batch_size", "lr")}
    parser.add_argument("--localiser", choices=("detector", "cam", "centre"), default="detector",
                        help="detector: a Faster R-CNN trained on the true boxes; cam: the box "
                             "of a trained classifier's class activation map (no boxes "
                             "needed); centre: a fixed centred box, the baseline every "
                             "localiser must beat")
    parser.add_argument("--classifier", type=Path,
                        help="cam: a best.pt of task 1-2 trained with this run's --seed, "
                             "--val-fraction and --limit")
    parser.add_argument("--cam-threshold", type=cli.share,
                        help="cam: the region where the map is at least this share of its "
                             "maximum (None: the share with the best validation CorLoc where "
                             f"validation has boxes, else {DEFAULT_CAM_THRESHOLD})")
    parser.add_argument("--cam-layer",
                        help="cam: the layer the map is read from (None: the last stage)")
    parser.add_argument("--centre-area", type=cli.share,
                        help="centre: the box's share of the photo (None: the share with the "
                             "best validation CorLoc where validation has boxes, else 0.5)")
    parser.add_argument("--detector", choices=tuple(DETECTORS), default="seed")
    parser.add_argument("--backbone-weights", choices=("imagenet", "none"), default="imagenet",
                        help="ImageNet torchvision ResNet weights for the backbone, or none")
    parser.add_argument("--detector-weights", type=Path,
                        help="start from this MMDetection checkpoint instead")
    parser.add_argument("--image-scale", type=cli.positive_int, nargs=2,
                        metavar=("LONG", "SHORT"), default=argparse.SUPPRESS,
                        help="resize to fit LONG x SHORT, keeping the aspect ratio (default "
                             f"per --detector: {per_detector['image_scale']})")
    parser.add_argument("--epochs", type=cli.nonnegative_int, default=argparse.SUPPRESS,
                        help="0: only predict (needs --detector-weights of a one-class "
                             f"detector) (default per --detector: {per_detector['epochs']})")
    parser.add_argument("--batch-size", type=cli.positive_int, default=argparse.SUPPRESS,
                        help=f"(default per --detector: {per_detector['batch_size']})")
    parser.add_argument("--lr", type=cli.positive_float, default=argparse.SUPPRESS,
                        help=f"SGD learning rate (default per --detector: {per_detector['lr']})")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path,
                        help="run folder (None: results/task3_crop/<dataset>/detector)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the training in <out>/mmdet from its last checkpoint")
    args = parser.parse_args(argv)
    for key, value in DETECTORS[args.detector].items():
        if getattr(args, key, None) is None:
            setattr(args, key, value)
    if args.epochs == 0 and args.detector_weights is None:
        parser.error("--epochs 0 predicts with --detector-weights, which is missing")
    if (args.localiser == "cam") != (args.classifier is not None):
        parser.error("--localiser cam needs --classifier (a task 1-2 best.pt)"
                     if args.classifier is None else "--classifier is for --localiser cam")
    args.out = args.out or Path("results", TASK, args.dataset, args.localiser)
    return args


def main(args: argparse.Namespace) -> None:
    import localisers  # torch (and mmdet, for the detector) load here

    from shared import checkpoint, data

    if int(os.environ.get("WORLD_SIZE", "1")) > 1:  # each process would train its own
        raise errors.TrainingError("task3_crop/detect.py runs in one process (one GPU); "
                                   "start it without torchrun")
    checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args.dataset, args.data_root,
                                                  args.val_fraction, args.seed, args.limit)
    if args.localiser == "centre":
        localisers.centre_localiser(args, index, train, val, test)
    elif args.localiser == "cam":
        localisers.cam_localiser(args, index, train, val, test, DEFAULT_CAM_THRESHOLD)
    else:
        localisers.detector_localiser(args, index, train, val, test)


if __name__ == "__main__":
    cli.run(main, parse_args())
