"""Task 3, step 2: classify the animal's crop (Table 2).

    python task3_crop/detect.py --dataset bird                  # first: boxes.json
    python task3_crop/train.py --dataset bird --crop box        # crops: true boxes for train,
                                                                #   predicted boxes for val/test
    python task3_crop/train.py --dataset bird --crop square
    python task3_crop/train.py --dataset bird --crop box --test-boxes gt   # oracle upper bound

The classifier and its training are task 1-2's (same flags, same `--recipe`); only the images
change: each is cropped on the fly to a box (`--crop box`, grown by `--margin` of its size on
every side) or to the square of the box's longer side centred on it (`--crop square`), clipped
to the image. Training crops use `--train-boxes` (the true boxes where the data has them, as
the seed did, else the predicted ones); validation and test crops use `--test-boxes`: `pred`,
the detector's top box, is the honest setting, `gt` the oracle. An image the detector found
nothing in is kept whole and counted. Where a photo holds several true boxes, the largest is
the subject.

`--tta whole+crop` is test-time refine (as WS-DAN's): each test image's class probabilities
on the whole photo and on its crop, averaged. One model gives both: it trains on each image
whole or cropped, half the time each (drawn from the image's augmentation seed), and its best
epoch is chosen on the validation crops. `test_top1` is then the average's accuracy
(tta_predictions.npz); the crop alone is `crop_view_top1` (test_predictions.npz).

metrics.json adds the detector's quality on test (`detector_corloc`, `detector_miou`,
`no_detection`) and how many images per split fell back to the whole image.
"""

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared/ without PYTHONPATH
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, any name

from shared import cli  # argparse only: torch loads in main, so --help answers at once

TASK = "task3_crop"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    group = parser.add_argument_group("crop")
    group.add_argument("--crop", choices=("none", "box", "square"), default="box")
    group.add_argument("--margin", type=cli.nonnegative_float, default=0.0,
                       help="grow the box by this share of its width and height on every side")
    group.add_argument("--train-boxes", choices=("gt", "pred"), default=None,
                       help="boxes that crop the training images (default: gt where the data "
                            "has true boxes, else pred)")
    group.add_argument("--test-boxes", choices=("pred", "gt"), default="pred",
                       help="boxes that crop the validation and test images (gt: oracle)")
    group.add_argument("--tta", choices=("none", "whole+crop"), default="none",
                       help="whole+crop: test-time refine; the class probabilities of the "
                            "whole photo and of its crop averaged (training shows each image "
                            "whole or cropped, half the time each, so one model knows both)")
    group.add_argument("--boxes", type=Path,
                       help="the detector's boxes file (default "
                            "results/task3_crop/<dataset>/detector/boxes.json)")
    args = cli.parse_with_recipes(parser, argv)
    if args.tta != "none" and args.crop == "none":
        parser.error("--tta whole+crop needs a crop (--crop box or square)")
    if args.train_boxes is None:
        args.train_boxes = "gt" if cli.has_true_boxes(args.dataset, args.data_root) else "pred"
    args.boxes = args.boxes or Path("results", TASK, args.dataset, "detector", "boxes.json")
    args.out = args.out or Path("results", TASK, args.dataset, variant(args))
    return args


def variant(args) -> str:
    if args.crop == "none":
        return "none"
    return (args.crop + ("-train-pred" if args.train_boxes == "pred" else "")
            + ("-oracle" if args.test_boxes == "gt" else "")
            + ("-tta" if args.tta == "whole+crop" else ""))


def main(args: argparse.Namespace) -> None:
    import boxes as boxes_io  # torch loads here
    import refine

    from shared import checkpoint, data, engine
    from shared.errors import DataError

    rt = engine.init_runtime(args.device, args.amp, args.seed)
    checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args.dataset, args.data_root,
                                                  args.val_fraction, args.seed, args.limit)

    uses_predictions = args.crop != "none" and "pred" in (args.train_boxes, args.test_boxes)
    detections, quality = None, {}
    if uses_predictions:
        detections, detector_train = boxes_io.read_boxes(args.boxes, args.dataset,
                                                         train + val + test)
        seen = detector_train & {r.key for r in val + test}
        if seen:
            raise DataError(f"{args.boxes}: its localiser trained on {len(seen)} validation "
                            "or test images; rerun detect.py (and, for CAM boxes, train its "
                            "classifier) with this run's --seed, --val-fraction and --limit")
        if args.test_boxes == "pred":
            quality = boxes_io.localisation(test, detections)
    fallback = {}
    train, fallback["train"] = boxes_io.with_crops(train, args.train_boxes, detections,
                                                   args.crop, args.margin)
    val, fallback["val"] = boxes_io.with_crops(val, args.test_boxes, detections, args.crop,
                                               args.margin)
    test, fallback["test"] = boxes_io.with_crops(test, args.test_boxes, detections, args.crop,
                                                 args.margin)

    localiser = boxes_io.localiser_name(args.boxes) if uses_predictions else "true boxes"
    both_views = args.tta == "whole+crop"
    after = refine.whole_and_crop(Path(args.out), args.seed, rt, test) if both_views else None
    cfg = engine.TrainConfig.from_flags(vars(args))
    engine.train_classifier(TASK, variant(args), vars(args), cfg, rt, index.classes, train, val,
                            test, counts={"whole_image_fallback": fallback}, localiser=localiser,
                            after=after, whole_share=refine.WHOLE_SHARE if both_views else 0.0,
                            tta=args.tta, **quality)
    if rt.main:
        print(f"crop {args.crop}, train boxes {args.train_boxes}, test boxes "
              f"{args.test_boxes}; whole image for {fallback['test']} test images")
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, parse_args())
