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

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `shared` without PYTHONPATH

from shared import cli  # noqa: E402  (argparse only)

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


if __name__ == "__main__":  # --help and bad flags answer before torch loads below
    ARGS = parse_args()

import copy  # noqa: E402
from dataclasses import replace  # noqa: E402

import torch  # noqa: E402

from shared import checkpoint, data, engine, results, stats  # noqa: E402
from shared.errors import DataError  # noqa: E402
from task3_crop import boxes as boxes_io  # noqa: E402


def variant(args) -> str:
    if args.crop == "none":
        return "none"
    return (args.crop + ("-train-pred" if args.train_boxes == "pred" else "")
            + ("-oracle" if args.test_boxes == "gt" else "")
            + ("-tta" if args.tta == "whole+crop" else ""))


WHOLE_SHARE = 0.5  # --tta whole+crop: how often a training image is shown whole


def whole_and_crop(args, rt: engine.Runtime, test: list[data.Record]):
    """`train_classifier`'s `after` for --tta whole+crop: the tested model's class
    probabilities on each test crop (fit's predictions) and on the whole photo, averaged;
    their log is the row's test logits (tta_predictions.npz, test_top1), and the crop
    alone stays in test_predictions.npz as crop_view_top1."""
    def after(model, spec, loaders, fitted):
        whole = copy.copy(loaders.test.dataset)
        whole.records = [replace(r, crop=None) for r in whole.records]
        loader = data.make_loader(whole, loaders.test.batch_size, train=False,
                                  workers=loaders.test.num_workers, seed=args.seed)
        whole_logits = engine.evaluate(model, spec, loader, rt, fitted["channels_last"],
                                       outputs=True)["logits"]
        crop_logits = torch.from_numpy(fitted["test_logits"]).float()
        averaged = (crop_logits.softmax(1) + whole_logits.softmax(1)) / 2
        labels = fitted["test_labels"]
        scores = results.score_predictions(
            Path(args.out), "tta_predictions.npz", [r.image_id or r.key for r in test],
            labels, averaged.clamp_min(1e-30).log().numpy(),
            {"test_top1": 1, "test_top5": 5}, write=rt.main)
        crop_view = results.merge(*(  # fit's own file and logits: the same figures
            results.scored(f"crop_view_top{k}", results.hits(fitted["test_logits"], labels, k),
                           engine.PREDICTIONS) for k in (1, 5)))
        logits = scores.pop("logits")
        ece = {"metrics": {"test_ece": stats.expected_calibration_error(logits, labels)}}
        return {**results.merge(crop_view, scores, ece), "test_logits": logits}
    return after


def main(args: argparse.Namespace) -> None:
    rt = engine.init_runtime(args)
    checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args)

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
    refine = args.tta == "whole+crop"
    engine.train_classifier(TASK, variant(args), args, rt, index.classes, train, val, test,
                            {"whole_image_fallback": fallback}, localiser=localiser,
                            after=whole_and_crop(args, rt, test) if refine else None,
                            whole_share=WHOLE_SHARE if refine else 0.0,
                            tta=args.tta, **quality)
    if rt.main:
        print(f"crop {args.crop}, train boxes {args.train_boxes}, test boxes "
              f"{args.test_boxes}; whole image for {fallback['test']} test images")
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, ARGS)
