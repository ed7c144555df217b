"""The localisers of task 3 (detect.py): a Faster R-CNN trained on the true boxes
(MMDetection), the box of a classifier's class activation map, and the centred box. Each
writes `<out>/boxes.json` (boxes.py) and `<out>/metrics.json`."""

from __future__ import annotations

import json
import math
import sys
import time
from pathlib import Path

import boxes as boxes_io
import mmcv_ext  # noqa: F401  (registers mmcv._ext before mmdet loads)
import torch
from PIL import Image

from shared import cam, checkpoint, data, engine, models, results
from shared.errors import DataError

TASK = "task3_crop"
SEED_CONFIG = "faster_rcnn/faster-rcnn_r101_fpn_2x_coco.py"
SCORE_THRESHOLD = 0.05  # mmdet's default; below it an image has no detection


def coco_json(records: list[data.Record], path: Path) -> None:
    """The train boxes in the COCO format mmdet's CocoDataset reads; one class, "object"."""
    images, annotations = [], []
    for image_id, r in enumerate(records, 1):
        if not r.boxes:
            raise DataError(f"{r.path} has no true box: training the detector needs the "
                            "dataset's boxes (CUB bounding_boxes.txt, Stanford Dogs Annotation/)")
        with Image.open(r.path) as image:
            width, height = image.size
        images.append({"id": image_id, "file_name": r.key, "width": width, "height": height})
        for x0, y0, x1, y1 in r.boxes:
            x0, y0, x1, y1 = max(x0, 0), max(y0, 0), min(x1, width), min(y1, height)
            annotations.append({"id": len(annotations) + 1, "image_id": image_id,
                                "category_id": 1, "bbox": [x0, y0, x1 - x0, y1 - y0],
                                "area": (x1 - x0) * (y1 - y0), "iscrowd": 0})
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 1, "name": "object"}]}))


def backbone_checkpoint(depth: int) -> str:
    """The torchvision ResNet file that mmdet's `torchvision://resnetN` means, from the torch
    hub cache or downloaded; offline, the error names the file and where it goes."""
    from mmengine.runner.checkpoint import get_torchvision_models
    url = get_torchvision_models()[f"resnet{depth}"]
    return str(models.cached_weights(url, f"ImageNet weights for the ResNet-{depth} backbone",
                                     "or train it from scratch with --backbone-weights none"))


def detector_config(args, images: Path, ann_file: Path, train_images: int):
    """The seed's mmdet config, made one-class and pointed at our data and run folder."""
    import mmdet
    from mmengine.config import Config

    cfg = Config.fromfile(Path(mmdet.__file__).parent / ".mim" / "configs" / SEED_CONFIG)
    model = cfg.model
    model.roi_head.bbox_head.num_classes = 1
    model.backbone.depth = args.depth
    if args.channels:  # a narrow FPN and heads for CPU
        c = args.channels
        model.neck.in_channels = [64, 128, 256, 512] if args.depth < 50 else \
            [256, 512, 1024, 2048]
        model.neck.out_channels = model.rpn_head.in_channels = model.rpn_head.feat_channels = c
        model.roi_head.bbox_roi_extractor.out_channels = model.roi_head.bbox_head.in_channels = c
        model.roi_head.bbox_head.fc_out_channels = 4 * c
        # RoIAlign on CPU is costly: at sampling ratio 0 (adaptive) its backward took most of
        # an iteration; torchvision's own Faster R-CNN samples 2x2 points per bin.
        model.roi_head.bbox_roi_extractor.roi_layer.sampling_ratio = 2
        model.train_cfg.rcnn.sampler.num = 256
    model.test_cfg.rcnn.score_thr = SCORE_THRESHOLD
    if args.detector_weights or args.backbone_weights == "none":
        model.backbone.init_cfg = None
        if not args.detector_weights:  # random weights: train every stage and its statistics
            model.backbone.frozen_stages, model.backbone.norm_eval = -1, False
    else:
        model.backbone.init_cfg.checkpoint = backbone_checkpoint(args.depth)

    scale = tuple(args.image_scale)
    train_pipeline = [dict(type="LoadImageFromFile"), dict(type="LoadAnnotations", with_bbox=True),
                      dict(type="Resize", scale=scale, keep_ratio=True),
                      dict(type="RandomFlip", prob=0.5), dict(type="PackDetInputs")]
    cfg.test_pipeline = [dict(type="LoadImageFromFile"),
                         dict(type="Resize", scale=scale, keep_ratio=True),
                         dict(type="PackDetInputs", meta_keys=("img_id", "img_path", "ori_shape",
                                                               "img_shape", "scale_factor"))]
    workers = data.loader_workers(args.workers, torch.cuda.is_available())
    cfg.train_dataloader = dict(
        batch_size=args.batch_size, num_workers=workers, persistent_workers=workers > 0,
        sampler=dict(type="DefaultSampler", shuffle=True),
        batch_sampler=dict(type="AspectRatioBatchSampler"),
        dataset=dict(type="CocoDataset", data_root=str(images.resolve()),
                     ann_file=str(ann_file.resolve()),  # a relative one joins data_root
                     data_prefix=dict(img=""), metainfo=dict(classes=("object",)),
                     filter_cfg=dict(filter_empty_gt=False, min_size=0),
                     pipeline=train_pipeline))
    for split in ("val", "test"):  # our own CorLoc replaces mmdet's COCO evaluation
        cfg[f"{split}_dataloader"] = cfg[f"{split}_cfg"] = cfg[f"{split}_evaluator"] = None
    cfg.train_cfg = dict(type="EpochBasedTrainLoop", max_epochs=args.epochs, val_interval=1)
    cfg.optim_wrapper.optimizer.lr = args.lr
    iterations = args.epochs * -(-train_images // args.batch_size)
    warmup = min(500, max(1, iterations // 4))
    cfg.param_scheduler = [
        dict(type="LinearLR", start_factor=0.001, by_epoch=False, begin=0, end=warmup),
        dict(type="MultiStepLR", begin=0, end=args.epochs, by_epoch=True, gamma=0.1,
             milestones=[round(args.epochs * 2 / 3), round(args.epochs * 11 / 12)])]
    cfg.default_hooks.logger.interval = 20
    cfg.default_hooks.checkpoint = dict(type="CheckpointHook", interval=1, max_keep_ckpts=1)
    cfg.visualizer.vis_backends = [dict(type="LocalVisBackend"),
                                   dict(type="TensorboardVisBackend")]
    cfg.work_dir = str(args.out / "mmdet")
    cfg.load_from = str(args.detector_weights) if args.detector_weights else None
    cfg.resume = args.resume
    cfg.randomness = dict(seed=args.seed)
    cfg.auto_scale_lr = None
    return cfg


def load_checkpoints_safely() -> None:
    """Every checkpoint mmengine loads (--detector-weights, the backbone, --resume) goes
    through shared.checkpoint.load: tensors, containers and plain numpy (which published
    MMDetection checkpoints hold in their meta), nothing that can run code."""
    from mmengine.runner.checkpoint import CheckpointLoader

    def load_local(filename, map_location):
        return checkpoint.load(Path(filename).expanduser(), "checkpoint",
                               checkpoint.numpy_globals())

    CheckpointLoader.register_scheme(prefixes="", loader=load_local, force=True)


def plain_checkpoints_hook():
    """mmengine's training checkpoints hold its message hub's HistoryBuffers, whose bound
    methods pickle through builtins.getattr, which no safe loader may allow. This hook saves
    them (and any numpy value) as tensors and plain values, and rebuilds them on --resume."""
    import numpy as np
    from mmengine.hooks import Hook
    from mmengine.logging import HistoryBuffer
    from mmengine.utils import apply_to

    class PlainCheckpoints(Hook):
        def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
            hub = checkpoint["message_hub"]
            hub["log_scalars"] = {
                key: {"log": torch.from_numpy(buffer._log_history),
                      "count": torch.from_numpy(buffer._count_history),
                      "max_length": buffer.max_length}
                for key, buffer in hub["log_scalars"].items()}
            checkpoint.update(apply_to(
                checkpoint, lambda x: isinstance(x, np.ndarray | np.generic),
                lambda x: torch.from_numpy(x) if isinstance(x, np.ndarray) else x.item()))

        def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
            hub = checkpoint.get("message_hub")
            if hub is not None:
                hub["log_scalars"] = {
                    key: HistoryBuffer(saved["log"].numpy(), saved["count"].numpy(),
                                       saved["max_length"])
                    for key, saved in hub["log_scalars"].items()}

    return PlainCheckpoints()


class PipelineDataset(torch.utils.data.Dataset):
    def __init__(self, records, pipeline):
        self.records, self.pipeline = records, pipeline

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.pipeline(dict(img_path=str(self.records[i].path), img_id=i))


@torch.no_grad()
def predict(model, cfg, records: list[data.Record], batch_size: int, workers: int
            ) -> dict[str, boxes_io.Detection]:
    """The top-scoring box per image, in the original image's pixels (None: nothing scored
    above the threshold)."""
    from mmengine.dataset import Compose, pseudo_collate
    model.eval()
    loader = torch.utils.data.DataLoader(PipelineDataset(records, Compose(cfg.test_pipeline)),
                                         batch_size, num_workers=workers,
                                         collate_fn=pseudo_collate)
    found, done = {}, 0
    for batch in loader:
        for sample in model.test_step(batch):
            instances = sample.pred_instances
            record = records[sample.img_id]
            if len(instances.scores):
                top = int(instances.scores.argmax())
                found[record.key] = (tuple(instances.bboxes[top].tolist()),
                                     float(instances.scores[top]))
            else:
                found[record.key] = None
        done += len(batch["inputs"])
        print(f"\rpredict {done}/{len(records)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    return found


CENTRE_AREAS = (0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)  # the shares tried
CAM_THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # 0.05, 0.10, ..., 0.95


def centre_box(width: int, height: int, area: float) -> data.Box:
    """The centred box of the photo's aspect ratio covering `area` of it."""
    w, h = width * math.sqrt(area), height * math.sqrt(area)
    return (width - w) / 2, (height - h) / 2, (width + w) / 2, (height + h) / 2


def centre_localiser(args, index, train, val, test) -> None:
    """boxes.json of the fixed centred box."""
    every = train + val + test
    sizes = {}
    for r in every:
        with Image.open(r.path) as image:
            sizes[r.key] = image.size
    boxes = {r.key: {a: centre_box(*sizes[r.key], a) for a in CENTRE_AREAS + (
        () if args.centre_area is None else (args.centre_area,))} for r in every}
    swept_localiser(args, index, train, val, test, boxes, CENTRE_AREAS, args.centre_area,
                    0.5, "--centre-area", {"localiser": "centre"},
                    "centre box (area {value:g}, {chosen_by})", "none", [], 0.0,
                    torch.device("cpu"))


def cam_localiser(args, index, train, val, test, default_threshold: float) -> None:
    """boxes.json of the classifier's class activation map for its predicted class: the box
    of the largest region above a share of the map's maximum, found on the letterboxed photo
    (all of it visible) and mapped back to the photo's pixels."""
    model, spec, meta = models.load_classifier(args.classifier, index.classes, "--classifier")
    trained_on = meta.get("train_keys")
    if trained_on is None:
        print(f"warning: {args.classifier} does not list its training images (saved before "
              "they were recorded): cannot check that it never trained on this run's "
              "validation or test images", file=sys.stderr)
    else:
        seen = set(trained_on) & {r.key for r in val + test}
        if seen:
            raise DataError(f"--classifier {args.classifier} trained on {len(seen)} of this "
                            "run's validation or test images; train it with the same --seed, "
                            "--val-fraction and --limit")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    layer = args.cam_layer or cam.default_layer(spec, model)
    size = meta["image_size"]
    transform = data.build_transform(False, size, "letterbox",
                                     normalization=(meta["mean"], meta["std"]))
    thresholds = CAM_THRESHOLDS + (() if args.cam_threshold is None else (args.cam_threshold,))
    every, boxes = train + val + test, {}
    start = time.perf_counter()
    for first in range(0, len(every), args.batch_size):
        chunk = every[first:first + args.batch_size]
        photos = [data.load_rgb(r.path) for r in chunk]
        maps, _ = cam.grad_cam(model, torch.stack([transform(p) for p in photos]).to(device),
                               layer)
        for r, photo, frame_boxes in zip(chunk, photos, cam.map_boxes(maps, thresholds, size),
                                         strict=True):
            boxes[r.key] = {t: data.box_from_letterbox(box, *photo.size, size)
                            for t, box in frame_boxes.items()}
        print(f"\rCAM {first + len(chunk)}/{len(every)}", end="", file=sys.stderr, flush=True)
    print(file=sys.stderr)
    swept_localiser(args, index, train, val, test, boxes, CAM_THRESHOLDS, args.cam_threshold,
                    default_threshold, "--cam-threshold",
                    {"localiser": "cam", "classifier": str(args.classifier), "layer": layer},
                    f"CAM of {meta['model_name']} ({layer}, threshold {{value:g}}, "
                    "{chosen_by})", args.classifier, trained_on or [],
                    (time.perf_counter() - start) / len(every), device)


def swept_localiser(args, index, train, val, test, boxes: dict, candidates: tuple,
                    given, default, flag: str, localiser: dict, name: str, weights,
                    train_keys, seconds_per_image: float, device: torch.device) -> None:
    """Write boxes.json and metrics.json of a localiser with one setting (`boxes`: image key
    -> {setting: box}), the one `flag` sets: the `given` one, else the candidate with the
    best validation CorLoc where validation has boxes (never test), else `default`. CorLoc at
    that setting and MaxBoxAcc (the best CorLoc over the candidates, threshold-free, Choe et
    al. 2020) where test has boxes."""
    value, chosen_by = boxes_io.choose_setting(val, boxes, candidates, given, default)
    chosen_by = flag if chosen_by == "given" else chosen_by
    # the setting is recorded under the flag's name: centre_area, cam_threshold
    localiser = {**localiser, flag.removeprefix("--").replace("-", "_"): value,
                 "chosen_by": chosen_by}
    boxes_io.write_boxes(args.out / "boxes.json", args.dataset, index.folder, localiser,
                         train_keys, boxes_io.at_setting(boxes, value))
    quality = {split: boxes_io.localisation(records, boxes_io.at_setting(boxes, value))
               for split, records in (("val", val), ("test", test))}
    every = len(train) + len(val) + len(test)
    record = results.task_record(
        TASK, localiser["localiser"], vars(args), engine.Runtime(device),
        {**quality["test"], **{f"val_{k}": v for k, v in quality["val"].items()},
         "max_box_acc": boxes_io.max_box_acc(test, boxes, candidates)},
        {"train": len(train), "val": len(val), "test": len(test), "predicted": every},
        model=name.format(value=value, chosen_by=chosen_by), weights=weights,
        timing={"train_seconds": 0.0, "train_seconds_per_image": 0.0,
                "predict_seconds_per_image": seconds_per_image}, localiser=localiser)
    results.write_json(record, args.out / "metrics.json")
    corloc_text = ("no true boxes: CorLoc not measured" if quality["test"]["detector_corloc"]
                   is None else f"test CorLoc {quality['test']['detector_corloc']:.4f}")
    print(f"{localiser['localiser']}: {flag.removeprefix('--')} {value:g} ({chosen_by}): "
          f"{corloc_text} -> {args.out}/boxes.json")



def detector_localiser(args, index, train, val, test) -> None:
    """A Faster R-CNN (MMDetection) trained on the true boxes of the train split (or loaded
    from --detector-weights), its top box for every image: boxes.json and metrics.json."""
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.runner import Runner, load_checkpoint

    register_all_modules()
    load_checkpoints_safely()
    ann_file = args.out / "coco_train.json"
    coco_json(train, ann_file)
    cfg = detector_config(args, index.folder / ("images" if args.dataset == "bird" else "Images"),
                          ann_file, len(train))

    start = time.perf_counter()
    if args.epochs > 0:
        runner = Runner.from_cfg(cfg)
        runner.register_hook(plain_checkpoints_hook())
        model = runner.train()
    else:
        model = MODELS.build(cfg.model)
        try:  # predicting with these weights alone: every tensor must fit
            load_checkpoint(model, str(args.detector_weights), map_location="cpu", strict=True)
        except RuntimeError as e:
            raise DataError(f"{args.detector_weights} does not fit the one-class "
                            f"--detector {args.detector}: {str(e).strip().splitlines()[0]}"
                            ) from None
        model.to("cuda" if torch.cuda.is_available() else "cpu")
    train_seconds = time.perf_counter() - start
    # The trained weights alone, as MMDetection publishes checkpoints: --detector-weights
    checkpoint.save_atomic({"state_dict": model.state_dict(),
                            "meta": {"dataset_meta": {"classes": ("object",)}}},
                           args.out / "detector.pth")

    every = train + val + test
    start = time.perf_counter()
    detections = predict(model, cfg, every, args.batch_size, cfg.train_dataloader.num_workers)
    predict_seconds = time.perf_counter() - start

    detector = {"detector": args.detector, "config": SEED_CONFIG, "depth": args.depth,
                "image_scale": list(args.image_scale), "epochs": args.epochs,
                "backbone_weights": args.backbone_weights,
                "detector_weights": str(args.detector_weights or ""),
                "score_threshold": SCORE_THRESHOLD}
    boxes_io.write_boxes(args.out / "boxes.json", args.dataset, index.folder, detector,
                         [r.key for r in train], detections)
    # scored as train.py will read them back (coordinates rounded to 0.01 px)
    detections, _ = boxes_io.read_boxes(args.out / "boxes.json", args.dataset, every)
    quality = {split: boxes_io.localisation(records, detections)
               for split, records in (("val", val), ("test", test))}
    device = next(model.parameters()).device
    record = results.task_record(
        TASK, "detector", vars(args), engine.Runtime(device),
        {**quality["test"], **{f"val_{k}": v for k, v in quality["val"].items()},
         "max_box_acc": quality["test"]["detector_corloc"]},  # one box an image: no sweep
        {"train": len(train), "val": len(val), "test": len(test), "predicted": len(every)},
        model=f"faster-rcnn r{args.depth} fpn ({args.detector})",
        weights=args.detector_weights or args.backbone_weights,
        timing={"train_seconds": train_seconds,
                "train_seconds_per_image": train_seconds / max(1, len(train) * args.epochs),
                "predict_seconds_per_image": predict_seconds / len(every)})
    results.write_json(record, args.out / "metrics.json")
    q = quality["test"]
    print(f"test CorLoc {q['detector_corloc']:.4f} mIoU {q['detector_miou']:.4f} "
          f"no detection {q['no_detection']} -> {args.out}/boxes.json")
