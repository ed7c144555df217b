"""Task 3: crop regions, the boxes file, localisation quality, a real mmdet Faster R-CNN
trained and run on CPU through detect.py, and crop classification through train.py."""

import json
import os
import shutil
from dataclasses import replace

import boxes as boxes_io
import numpy as np
import pytest
import torch
from conftest import REPO, assert_predictions_reproduce, run_cli
from PIL import Image

from shared import checkpoint, data
from shared.data import Record
from shared.errors import DataError
from shared.results import write_tables


def record(key="a.jpg", boxes=((10.0, 20.0, 50.0, 40.0),), path="a.jpg", label=0):
    return Record(key, path, label, tuple(boxes))


def test_crop_regions():
    box = (10.0, 20.0, 50.0, 40.0)  # 40 wide, 20 high, centre (30, 30)
    assert boxes_io.crop_region(box, "box", 0.0) == box
    assert boxes_io.crop_region(box, "box", 0.25) == (0.0, 15.0, 60.0, 45.0)
    assert boxes_io.crop_region(box, "square", 0.0) == (10.0, 10.0, 50.0, 50.0)
    assert boxes_io.crop_region(box, "square", 0.25) == (0.0, 0.0, 60.0, 60.0)


def test_iou_and_localisation_quality():
    assert boxes_io.iou((0, 0, 10, 10), (5, 0, 15, 10)) == pytest.approx(50 / 150)
    assert boxes_io.iou((0, 0, 10, 10), (20, 20, 30, 30)) == 0.0
    records = [record("a", [(0, 0, 10, 10)]), record("b", [(0, 0, 10, 10), (20, 0, 30, 10)]),
               record("c", [(0, 0, 10, 10)]), record("d", [(0, 0, 10, 10)])]
    detections = {"a": ((0, 0, 10, 10), 0.9),        # IoU 1
                  "b": ((20, 0, 30, 5), 0.8),         # best match: the second dog, IoU 0.5
                  "c": ((5, 0, 15, 10), 0.7),         # IoU 1/3: a miss
                  "d": None}                          # nothing found: a miss, IoU 0
    quality = boxes_io.localisation(records, detections)
    assert quality["detector_corloc"] == 0.5
    assert quality["detector_miou"] == pytest.approx((1 + 0.5 + 1 / 3 + 0) / 4)
    assert quality["no_detection"] == 1


def test_with_crops_uses_the_largest_true_box_and_counts_fallbacks():
    records = [record("a", [(0, 0, 10, 10), (0, 0, 30, 30)]), record("b")]
    cropped, whole = boxes_io.with_crops(records, "gt", None, "box", 0.0)
    assert cropped[0].crop == (0, 0, 30, 30) and whole == 0
    detections = {"a": ((1.0, 2.0, 3.0, 4.0), 0.9), "b": None}
    cropped, whole = boxes_io.with_crops(records, "pred", detections, "square", 0.0)
    assert cropped[0].crop == (1.0, 2.0, 3.0, 4.0) and cropped[1].crop is None and whole == 1
    assert boxes_io.with_crops(records, "pred", detections, "none", 0.0) == (records, 0)
    with pytest.raises(DataError, match="no true box"):
        boxes_io.with_crops([record("c", [])], "gt", None, "box", 0.0)


def test_the_loader_sees_only_the_crop_clipped_to_the_image(tmp_path):
    pixels = np.zeros((40, 60, 3), dtype=np.uint8)
    pixels[10:40, 20:60] = 255  # a white object on black, touching the bottom-right border
    Image.fromarray(pixels).save(tmp_path / "a.png")
    to_tensor = data.build_transform(False, 8, "center-crop")
    path = tmp_path / "a.png"
    whole, _ = data.ImageDataset([Record("a", path, 0)], to_tensor)[0]
    crop, _ = data.ImageDataset([Record("a", path, 0, crop=(20, 10, 60, 40))], to_tensor)[0]
    # a region past the border is clipped to the image (no black padding)
    clipped, _ = data.ImageDataset([Record("a", path, 0, crop=(20, 10, 90, 70))], to_tensor)[0]
    assert whole.min() == 0 and crop.min() == 255 and clipped.min() == 255


    # --tta whole+crop trains on both views: the augmentation seed decides which
    both = data.ImageDataset([Record("a", path, 0, crop=(20, 10, 60, 40))], to_tensor,
                             whole_share=0.5)
    views = {int(both[0, seed][0].min()) for seed in range(20)}
    assert views == {0, 255} and both[0][0].min() == 255  # evaluation: always the crop
    assert both[0, 3][0].equal(both[0, 3][0])  # the seed alone decides


@pytest.mark.parametrize("width, height", [(60, 40), (30, 75), (50, 50)])
def test_boxes_map_back_through_the_letterbox(tmp_path, width, height):
    """A box drawn on a photo lands where box_to_letterbox says in the Letterbox transform's
    output, and box_from_letterbox brings it back to the photo's pixels."""
    box = (round(0.2 * width), round(0.3 * height), round(0.7 * width), round(0.9 * height))
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    pixels[box[1]:box[3], box[0]:box[2]] = 255
    size = 48
    frame = data.Letterbox(size)(torch.from_numpy(pixels).permute(2, 0, 1))
    ys, xs = np.nonzero(frame[0].numpy() > 127)
    drawn = (xs.min(), ys.min(), xs.max() + 1, ys.max() + 1)
    mapped = data.box_to_letterbox(box, width, height, size)
    assert np.allclose(drawn, mapped, atol=1.0)
    assert data.box_from_letterbox(mapped, width, height, size) == pytest.approx(box)
    # a box reaching into the padding ends at the photo's edge
    assert data.box_from_letterbox((-5, -5, size + 5, size + 5), width, height, size) == \
        pytest.approx((0, 0, width, height))


def test_a_swept_localiser_is_chosen_on_validation_and_scored_by_max_box_acc():
    """Two settings, hand-computed: "a" boxes are right on images 1 and 2, "b" on image 3
    alone; validation (images 1, 3) ties them, so the first wins."""
    true = (0.0, 0.0, 10.0, 10.0)
    right, wrong = true, (20.0, 20.0, 30.0, 30.0)
    records = [record(str(i), [true]) for i in (1, 2, 3)]
    boxes = {"1": {"a": right, "b": wrong}, "2": {"a": right, "b": wrong},
             "3": {"a": wrong, "b": right}}
    val, test = [records[0], records[2]], records
    assert boxes_io.corloc_at(test, boxes, "a") == pytest.approx(2 / 3)
    assert boxes_io.corloc_at(test, boxes, "b") == pytest.approx(1 / 3)
    assert boxes_io.choose_setting(val, boxes, ("a", "b"), None, "b") == \
        ("a", "validation CorLoc")
    assert boxes_io.choose_setting([records[2]], boxes, ("a", "b"), None, "a")[0] == "b"
    assert boxes_io.choose_setting(val, boxes, ("a", "b"), "b", "a") == ("b", "given")
    unboxed = [record("1", [])]
    assert boxes_io.choose_setting(unboxed, boxes, ("a", "b"), None, "b") == \
        ("b", "default: no validation boxes")
    assert boxes_io.max_box_acc(test, boxes, ("a", "b")) == pytest.approx(2 / 3)
    assert boxes_io.max_box_acc(unboxed, boxes, ("a", "b")) is None


def write_boxes_file(path, dataset, records, train_keys=(), drop=0):
    detections = {r.key: (r.boxes[0], 0.9) for r in records[drop:]}
    boxes_io.write_boxes(path, dataset, path.parent, {}, list(train_keys), detections)


def test_boxes_file_must_match_the_dataset(sample, tmp_path):
    root, _ = sample
    index = data.load_dataset("bird", root)
    records = index.train + index.test
    write_boxes_file(tmp_path / "boxes.json", "bird", records)
    detections, _ = boxes_io.read_boxes(tmp_path / "boxes.json", "bird", records)
    assert detections[records[0].key] == (records[0].boxes[0], 0.9)
    with pytest.raises(DataError, match=r"boxes\.json holds boxes for --dataset bird, not dog"):
        boxes_io.read_boxes(tmp_path / "boxes.json", "dog", records)
    write_boxes_file(tmp_path / "partial.json", "bird", records, drop=3)
    with pytest.raises(DataError, match=rf"partial\.json has no box for 3 of {len(records)} "
                                        rf"images of bird, e\.g\. {records[0].key}"):
        boxes_io.read_boxes(tmp_path / "partial.json", "bird", records)
    (tmp_path / "bad.json").write_text("[1, 2]")
    with pytest.raises(DataError, match=r"bad\.json is not a boxes file"):
        boxes_io.read_boxes(tmp_path / "bad.json", "bird", records)
    with pytest.raises(DataError, match=r"missing\.json not found: .*detect\.py --dataset bird"):
        boxes_io.read_boxes(tmp_path / "missing.json", "bird", records)


# ----------------------------------------------------------------- detect.py and train.py

DETECTOR_ARGS = ("--detector", "small", "--backbone-weights", "none", "--image-scale", "64", "64",
                 "--batch-size", "4", "--val-fraction", "0.25", "--seed", "0")


@pytest.fixture(scope="module")
def detector_run(sample, tmp_path_factory):
    """A real Faster R-CNN (mmdet's bundled config, narrowed) trained for two iterations on
    8 generated photos, then run on every image of every split."""
    root, _ = sample
    out = tmp_path_factory.mktemp("detector")
    for epochs, resume in (("1", ()), ("2", ("--resume",))):  # killed after epoch 1, resumed
        # relative paths, from another folder, as a user may give them
        result = run_cli(str(REPO / "task3_crop" / "detect.py"), "--dataset", "dog",
                         "--data-root", os.path.relpath(root, out.parent), *DETECTOR_ARGS,
                         "--epochs", epochs, "--limit", "8", "--out", out.name, *resume,
                         cwd=out.parent)
        assert result.returncode == 0, result.stderr[-3000:]
    return root, out


def test_detector_trains_and_predicts_a_box_for_every_image(detector_run):
    root, out = detector_run
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "task3_crop" and metrics["variant"] == "detector"
    assert metrics["data"]["train"] == 8
    index = data.load_dataset("dog", root)
    train, val = data.split_train_val(index.train, 0.25, 0)
    splits = [data.limit_per_split(s, 8, 0) for s in (train, val, index.test)]
    boxes = json.loads((out / "boxes.json").read_text())
    assert boxes["dataset"] == "dog"
    assert set(boxes["boxes"]) == {r.key for s in splits for r in s}
    assert boxes["detector_train_keys"] == sorted(r.key for r in splits[0])
    for entry in boxes["boxes"].values():
        if entry is not None:
            x0, y0, x1, y1 = entry["box"]
            assert x0 <= x1 and y0 <= y1 and 0 <= entry["score"] <= 1
    # the COCO json holds every dog of every training photo, clipped to the image
    coco = json.loads((out / "coco_train.json").read_text())
    assert len(coco["images"]) == 8
    assert len(coco["annotations"]) == sum(len(r.boxes) for r in splits[0])
    assert {a["category_id"] for a in coco["annotations"]} == {1}
    # two iterations an epoch (8 photos, batch 4); the second run resumed after epoch 1
    first, second = (p.read_text() for p in sorted((out / "mmdet").rglob("*.log")))
    assert "Epoch(train) [1][2/2]" in first and "Epoch(train) [2]" not in first
    assert "resumed epoch: 1" in second.lower() and "Epoch(train) [2][2/2]" in second
    assert "Epoch(train) [1]" not in second
    # mmengine's training checkpoints were saved as plain values: torch's allow-list alone
    # loads them (no numpy, no HistoryBuffer, no getattr), and the resume rebuilt the hub
    saved = checkpoint.load(out / "mmdet" / "epoch_2.pth")
    assert isinstance(saved["message_hub"]["log_scalars"]["train/loss"]["log"], torch.Tensor)
    assert list((out / "mmdet").rglob("events.out.tfevents.*"))
    for key in ("detector_corloc", "detector_miou", "val_detector_corloc"):
        assert 0 <= metrics["metrics"][key] <= 1


def test_detector_predicts_with_given_weights(detector_run, tmp_path):
    root, out = detector_run
    # --epochs 0 --detector-weights: predict only, with the trained one-class checkpoint
    result = run_cli("task3_crop/detect.py", "--dataset", "dog", "--data-root", str(root),
                     *DETECTOR_ARGS, "--epochs", "0", "--limit", "8",
                     "--detector-weights", str(out / "detector.pth"),
                     "--out", str(tmp_path / "again"))
    assert result.returncode == 0, result.stderr[-3000:]
    first = json.loads((out / "boxes.json").read_text())["boxes"]
    again = json.loads((tmp_path / "again" / "boxes.json").read_text())["boxes"]
    assert again.keys() == first.keys()
    same = [k for k in first if first[k] and again[k]
            and np.allclose(first[k]["box"], again[k]["box"], atol=0.05)]
    assert len(same) == sum(1 for k in first if first[k])


def test_crop_classifier_records_detector_quality(detector_run, tmp_path):
    root, det = detector_run
    out = tmp_path / "results" / "task3_crop" / "dog" / "box"
    common = ("--dataset", "dog", "--data-root", str(root), "--model", "resnet18",
              "--weights", "none", "--image-size", "32", "--batch-size", "4", "--epochs", "1",
              "--val-fraction", "0.25", "--limit", "8", "--boxes", str(det / "boxes.json"))
    result = run_cli("task3_crop/train.py", *common, "--crop", "box", "--margin", "0.1",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    detector = json.loads((det / "metrics.json").read_text())["metrics"]
    assert record["task"] == "task3_crop" and record["variant"] == "box"
    for key in ("detector_corloc", "detector_miou", "no_detection"):
        assert record["metrics"][key] == detector[key]
    fallback = record["data"]["whole_image_fallback"]
    assert fallback["train"] == 0  # training crops come from the true boxes
    boxes = json.loads((det / "boxes.json").read_text())["boxes"]
    index = data.load_dataset("dog", root)
    test = data.limit_per_split(index.test, 8, 0)
    assert fallback["test"] == sum(boxes[r.key] is None for r in test)

    oracle = tmp_path / "results" / "task3_crop" / "dog" / "square-oracle"
    result = run_cli("task3_crop/train.py", *common[:-2], "--crop", "square",
                     "--test-boxes", "gt", "--boxes", str(tmp_path / "none.json"),
                     "--out", str(oracle))  # true boxes everywhere: no boxes file needed
    assert result.returncode == 0, result.stderr[-3000:]
    assert "detector_corloc" not in json.loads((oracle / "metrics.json").read_text())["metrics"]
    assert_predictions_reproduce(oracle)
    tables = write_tables(tmp_path / "results").read_text()
    table2 = tables.split("## Table 2:")[1].split("## Table 2b")[0]
    assert "| square | true boxes | gt | gt (oracle) |" in table2
    assert "| box | detector (small) | gt | predicted |" in table2


def test_crop_classifier_refuses_boxes_that_do_not_fit(detector_run, tmp_path):
    root, det = detector_run
    common = ("task3_crop/train.py", "--data-root", str(root), "--model", "resnet18",
              "--weights", "none", "--image-size", "32", "--epochs", "1",
              "--val-fraction", "0.25", "--out", str(tmp_path / "run"))
    boxes = ("--boxes", str(det / "boxes.json"))
    result = run_cli(*common, "--dataset", "bird", "--limit", "8", *boxes)
    assert result.returncode != 0 and "holds boxes for --dataset dog, not bird" in result.stderr
    result = run_cli(*common, "--dataset", "dog", *boxes)  # more images than were predicted
    assert result.returncode != 0 and "has no box for" in result.stderr
    # a detector that saw a test photo must not crop the test split
    index = data.load_dataset("dog", root)
    leaky = tmp_path / "leaky.json"
    write_boxes_file(leaky, "dog", index.train + index.test, train_keys=[index.test[0].key])
    result = run_cli(*common, "--dataset", "dog", "--boxes", str(leaky))
    assert result.returncode != 0 and "its localiser trained on 1 validation or test" in \
        result.stderr
    assert "Traceback" not in result.stderr


def test_detector_needs_true_boxes(sample, tmp_path):
    root, _ = sample
    shutil.copytree(root / "CUB_200_2011", tmp_path / "CUB_200_2011")
    (tmp_path / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    result = run_cli("task3_crop/detect.py", "--dataset", "bird", "--data-root", str(tmp_path),
                     *DETECTOR_ARGS, "--epochs", "1", "--out", str(tmp_path / "det"))
    assert result.returncode != 0
    assert "has no true box" in result.stderr and "Traceback" not in result.stderr


def test_offline_backbone_weights_name_the_file(sample, tmp_path):
    root, _ = sample
    result = run_cli("task3_crop/detect.py", "--dataset", "bird", "--data-root", str(root),
                     "--limit", "4", "--out", str(tmp_path / "det"),
                     env_extra={"TORCH_HOME": str(tmp_path), "FGVC_OFFLINE": "1"})
    assert result.returncode != 0 and "Traceback" not in result.stderr
    assert f"put resnet101-63fe2227.pth (from https://download.pytorch.org/models/" \
           f"resnet101-63fe2227.pth) in {tmp_path}/hub/checkpoints/" in result.stderr
    assert "--backbone-weights none" in result.stderr


def test_mmdet_faster_rcnn_from_the_bundled_config_trains_on_cpu(sample, tmp_path):
    """Two iterations through mmdet's own loss and optimiser on the seed's config (made
    one-class and narrow), then inference: the loss falls on a repeated batch."""
    import localisers

    from task3_crop import detect

    root, _ = sample
    args = detect.parse_args(["--dataset", "bird", "--data-root", str(root), *DETECTOR_ARGS,
                              "--limit", "4", "--out", str(tmp_path)])
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.dataset import Compose, pseudo_collate

    register_all_modules()
    index, train, _, _ = data.prepare_splits("bird", root, limit=4)
    ann = tmp_path / "coco.json"
    localisers.coco_json(train, ann)
    cfg = localisers.detector_config(args, index.folder / "images", ann, len(train))
    torch.manual_seed(0)
    model = MODELS.build(cfg.model)
    model.init_weights()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    pipeline = Compose(cfg.train_dataloader.dataset.pipeline[:3] + [dict(type="PackDetInputs")])
    coco = json.loads(ann.read_text())
    samples = [pipeline(dict(img_path=str(index.folder / "images" / image["file_name"]),
                             img_id=image["id"], instances=[
                                 dict(bbox=[a["bbox"][0], a["bbox"][1],
                                            a["bbox"][0] + a["bbox"][2],
                                            a["bbox"][1] + a["bbox"][3]],
                                      bbox_label=0, ignore_flag=0)
                                 for a in coco["annotations"] if a["image_id"] == image["id"]]))
               for image in coco["images"]]
    batch = model.data_preprocessor(pseudo_collate(samples), training=True)
    model.train()
    losses = []
    for _ in range(2):
        loss, _ = model.parse_losses(model(**batch, mode="loss"))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses)) and losses[1] < losses[0]
    model.eval()
    test = Compose(cfg.test_pipeline)
    with torch.no_grad():
        out = model.test_step(pseudo_collate([test(dict(img_path=str(train[0].path),
                                                        img_id=0))]))
    assert out[0].pred_instances.bboxes.shape[1] == 4
    assert out[0].ori_shape == Image.open(train[0].path).size[::-1]


def test_centre_box_localiser_needs_no_detector(sample, tmp_path):
    """The baseline localiser: a centred box whose share is chosen on validation, scored by
    CorLoc and MaxBoxAcc, in the boxes file train.py reads; without true boxes it still
    writes boxes and its scores read '–'."""
    root, _ = sample
    out = tmp_path / "results" / "task3_crop" / "bird" / "centre"
    common = ("--dataset", "bird", "--val-fraction", "0.25", "--seed", "0")
    result = run_cli("task3_crop/detect.py", *common, "--data-root", str(root),
                     "--localiser", "centre", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    assert record["localiser"]["chosen_by"] == "validation CorLoc"
    area = record["localiser"]["centre_area"]
    index = data.load_dataset("bird", root)
    train, val = data.split_train_val(index.train, 0.25, 0)
    detections, _ = boxes_io.read_boxes(out / "boxes.json", "bird", train + val + index.test)
    x0, y0, x1, y1 = detections[index.test[0].key][0]
    width, height = Image.open(index.test[0].path).size
    assert (x1 - x0) * (y1 - y0) == pytest.approx(area * width * height, rel=1e-3)
    assert (x0 + x1) / 2 == pytest.approx(width / 2, abs=0.01)
    metrics = record["metrics"]
    assert metrics["detector_corloc"] <= metrics["max_box_acc"] <= 1
    crop = tmp_path / "results" / "task3_crop" / "bird" / "box-centre"
    result = run_cli("task3_crop/train.py", *common, "--data-root", str(root), "--model",
                     "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1",
                     "--batch-size", "8", "--boxes", str(out / "boxes.json"), "--out", str(crop))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((crop / "metrics.json").read_text())["metrics"]["localiser"] == \
        f"centre (area {area:g})"
    table = write_tables(tmp_path / "results").read_text().split("## Table 2b")[1]
    assert "centre box (area" in table

    bare = tmp_path / "bare"
    shutil.copytree(root / "CUB_200_2011", bare / "CUB_200_2011")
    (bare / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    unboxed = tmp_path / "results" / "task3_crop" / "bird" / "centre-unboxed"
    result = run_cli("task3_crop/detect.py", *common, "--data-root", str(bare),
                     "--localiser", "centre", "--out", str(unboxed))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((unboxed / "metrics.json").read_text())
    assert record["localiser"]["centre_area"] == 0.5
    assert record["metrics"]["detector_corloc"] is None and record["metrics"]["max_box_acc"] is None
    table = write_tables(tmp_path / "results").read_text().split("## Table 2b")[1]
    row = next(line for line in table.splitlines() if line.startswith("| centre box (area 0.5"))
    cells = [cell.strip() for cell in row.strip("|").split("|")]
    assert cells[1:9] == ["CUB-200-2011", "none", "–", "–", "–", "–", "–", "–"], row
    # CorLoc, MaxBoxAcc, mean IoU and no-detection count without boxes; no epochs, no input
    assert cells[10] == "–", row  # a centre box trains nothing: no train time
    # a crop run on data without true boxes trains on the predicted ones by default
    unboxed_crop = tmp_path / "unboxed-crop"
    result = run_cli("task3_crop/train.py", *common, "--data-root", str(bare), "--model",
                     "resnet18", "--weights", "none", "--image-size", "32", "--epochs", "1",
                     "--batch-size", "8", "--boxes", str(unboxed / "boxes.json"),
                     "--out", str(unboxed_crop))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((unboxed_crop / "metrics.json").read_text())["args"]["train_boxes"] == "pred"


def test_cam_localiser_crops_from_a_classifier_with_test_time_refine(sample, tmp_path):
    """detect.py --localiser cam: boxes from a task 1-2 classifier's CAM, the threshold
    chosen on validation, scored; train.py crops with them and refines with the whole
    photo; Tables 2 and 2b show both. A classifier that trained on this run's validation
    images is refused."""
    root, _ = sample
    common = ("--dataset", "bird", "--data-root", str(root), "--val-fraction", "0.25")
    classifier = tmp_path / "classifier"
    result = run_cli("task1_2_finetune/train.py", *common, "--variant", "baseline",
                     "--model", "resnet18", "--weights", "none", "--image-size", "32",
                     "--epochs", "2", "--batch-size", "8", "--out", str(classifier))
    assert result.returncode == 0, result.stderr[-3000:]
    out = tmp_path / "results" / "task3_crop" / "bird" / "cam"
    result = run_cli("task3_crop/detect.py", *common, "--localiser", "cam", "--classifier",
                     str(classifier / "best.pt"), "--batch-size", "16", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "warning" not in result.stderr
    record = json.loads((out / "metrics.json").read_text())
    localiser = record["localiser"]
    assert localiser["chosen_by"] == "validation CorLoc" and localiser["layer"] == "layer4"
    assert 0 < localiser["cam_threshold"] < 1
    metrics = record["metrics"]
    assert 0 <= metrics["detector_corloc"] <= metrics["max_box_acc"] <= 1
    index = data.load_dataset("bird", root)
    train, val = data.split_train_val(index.train, 0.25, 0)
    detections, trained_on = boxes_io.read_boxes(out / "boxes.json", "bird",
                                                 train + val + index.test)
    assert trained_on == {r.key for r in train}
    for r in index.test[:5]:  # boxes in the photo's own pixels
        x0, y0, x1, y1 = detections[r.key][0]
        width, height = Image.open(r.path).size
        assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height

    refined = tmp_path / "results" / "task3_crop" / "bird" / "box-train-pred-tta"
    result = run_cli("task3_crop/train.py", *common, "--model", "resnet18", "--weights", "none",
                     "--image-size", "32", "--epochs", "1", "--batch-size", "8", "--crop", "box",
                     "--train-boxes", "pred", "--tta", "whole+crop", "--boxes",
                     str(out / "boxes.json"), "--out", str(refined))
    assert result.returncode == 0, result.stderr[-3000:]
    run = assert_predictions_reproduce(refined)
    assert run["predictions"]["test_top1"] == "tta_predictions.npz"
    assert run["predictions"]["crop_view_top1"] == "test_predictions.npz"
    assert run["metrics"]["localiser"] == f"CAM (threshold {localiser['cam_threshold']:g})"
    tables = write_tables(tmp_path / "results").read_text()
    assert "| box + whole photo (TTA) | CAM (threshold" in tables.split("## Table 2b")[0]
    assert "| CAM of resnet18 (layer4, threshold" in tables.split("## Table 2b")[1]

    leaky = run_cli("task3_crop/detect.py", "--dataset", "bird", "--data-root", str(root),
                    "--val-fraction", "0.5", "--localiser", "cam", "--classifier",
                    str(classifier / "best.pt"), "--out", str(tmp_path / "leaky"))
    assert leaky.returncode != 0 and "trained on" in leaky.stderr and \
        "Traceback" not in leaky.stderr
    result = run_cli("task3_crop/detect.py", *common, "--localiser", "cam")
    assert result.returncode == 2 and "--localiser cam needs --classifier" in result.stderr


def test_whole_and_crop_averages_the_two_views_probabilities(sample, tmp_path):
    """Test-time refine on constructed scores: the crop view's logits say class 0, a
    "model" that sees the whole photo (and notes it: its logits follow the image's width)
    says class 1; the row's scores are the log of the mean of both views' softmax, each
    computed here on its own."""
    from types import SimpleNamespace

    from refine import whole_and_crop

    from shared import engine, results

    root, _ = sample
    index = data.load_dataset("bird", root)
    test = [replace(r, crop=(0.0, 0.0, 16.0, 16.0)) for r in index.test[:6]]

    class WholeSays1(torch.nn.Module):  # class 1 by the share of the frame filled
        def forward(self, x):
            filled = (x.abs().sum(1) > 0).float().mean((1, 2))
            return torch.stack([torch.zeros_like(filled), 4 * filled, -filled, -filled], 1)

    transform = data.build_transform(False, 32, "letterbox")
    loader = data.make_loader(data.ImageDataset(test, transform), 4, train=False)
    spec = SimpleNamespace(mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0), is_cnn=True)
    crop_logits = np.tile(np.float32([3.0, 0.0, 0.5, -1.0]), (len(test), 1))
    labels = np.array([r.label for r in test])
    after = whole_and_crop(tmp_path, 0, engine.Runtime(torch.device("cpu")), test)
    scores = after(WholeSays1(), spec, SimpleNamespace(test=loader),
                   {"test_logits": crop_logits, "test_labels": labels, "channels_last": False})
    with torch.no_grad():
        whole = WholeSays1()(torch.stack([transform(data.load_rgb(r.path)) for r in test]
                                         ).float() / 255)
    expected = (torch.from_numpy(crop_logits).softmax(1) + whole.softmax(1)) / 2
    saved = results.load_predictions(tmp_path / "tta_predictions.npz")["logits"]
    torch.testing.assert_close(torch.from_numpy(saved).float().exp(), expected, atol=2e-3,
                               rtol=2e-3)
    assert not torch.allclose(expected, torch.from_numpy(crop_logits).softmax(1), atol=0.05)
    assert scores["metrics"]["crop_view_top1"] == float(np.mean(labels == 0))
