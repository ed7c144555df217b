"""Run records (`<out>/metrics.json`) and the Markdown tables built only from them.

    python -m shared.results results/        # writes results/TABLES.md
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import posixpath
import subprocess
from pathlib import Path

import torch


def git_commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, check=True, cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(rt) -> dict:
    device = (torch.cuda.get_device_name(rt.device) if rt.device.type == "cuda"
              else cpu_name())
    return {"torch": torch.__version__, "device": f"{rt.device.type}: {device}",
            "world_size": rt.world_size, "threads": torch.get_num_threads(),
            "amp": str(rt.amp_dtype).removeprefix("torch.") if rt.amp_dtype else "off",
            "git": git_commit()}


def task_record(task: str, variant: str, args, rt, metrics: dict, data: dict, *,
                model: str | None = None, weights=None, **fields) -> dict:
    """The metrics.json of one run: what ran (task, variant, dataset, model, weights, all
    args), on what (env), and its numbers; `fields` adds task-specific keys (timing, ...)."""
    return {
        "task": task, "variant": variant, "dataset": args.dataset,
        "model": model or args.model, "weights": str(args.weights if weights is None else weights),
        "metrics": metrics, "data": data, "env": environment(rt), **fields,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
    }


def make_record(task: str, variant: str, args, rt, data: dict, fit_result: dict,
                **task_metrics) -> dict:
    """The metrics.json of a training run (`fit`'s result). Accuracies are fractions."""
    record = task_record(task, variant, args, rt, {**fit_result["metrics"], **task_metrics},
                         data, history=fit_result["history"], timing=fit_result["timing"])
    record["env"]["channels_last"] = fit_result["channels_last"]
    return record


def write_json(record: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def load_records(root: Path) -> list[dict]:
    """Every metrics.json under `root`, each with `_dir`, its folder relative to `root`."""
    return [{**json.loads(p.read_text()), "_dir": p.parent.relative_to(root).as_posix()}
            for p in sorted(Path(root).rglob("metrics.json"))]


# --------------------------------------------------------------------------------- tables

DATASET_NAMES = {"bird": "CUB-200-2011", "dog": "Stanford Dogs"}


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _detector_pct(r):
    return (_pct(r["metrics"].get("detector_corloc"))
            if r["args"].get("test_boxes") == "pred" and r["args"].get("crop") != "none"
            else "–")


def _split_counts(r):
    return f"{r['data']['train']} / {r['data']['val']} / {r['data']['test']}"


ACCURACY = [
    ("Accuracy (test top-1, %)", lambda r: _pct(r["metrics"]["test_top1"])),
    ("Top-5 (%)", lambda r: _pct(r["metrics"]["test_top5"])),
    ("Best val top-1 (%)", lambda r: _pct(r["metrics"]["best_val_top1"])),
    ("Best epoch", lambda r: f"{r['metrics']['best_epoch']}/{r['args']['epochs']}"),
]
CROPS = {"none": 0, "box": 1, "square": 2}


def _is_baseline(r) -> bool:
    """Task 1-2's pretrained seed-recipe run: the row without a task's change (Tables 2, 3)."""
    return (r["task"] == "task1_2_finetune" and r["variant"] == "pretrained"
            and r["args"].get("recipe", "seed") == "seed")


def _is_crop_row(r) -> bool:
    return _is_baseline(r) or (r["task"] == "task3_crop" and r["variant"] != "detector")


def _is_gan_row(r) -> bool:
    return _is_baseline(r) or r["task"] == "task4_dcgan"


def _crop_order(r):
    return (r["dataset"], r["task"] == "task3_crop", CROPS[r["args"].get("crop", "none")],
            r["args"].get("test_boxes") == "gt", r["variant"])


# Each study: title, which records are its rows, their order, and the columns (header, how
# to read it from a record).
STUDIES = [
    ("Table 1: training tricks and transfer learning (task 1-2)",
     lambda r: r["task"] == "task1_2_finetune",
     lambda r: (r["dataset"], r["model"], r["variant"]), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Variant", lambda r: r["variant"]),
        ("Recipe", lambda r: r["args"].get("recipe", "–")),
        ("Weights", lambda r: r["weights"]),
        *ACCURACY,
        ("Image size", lambda r: r["args"]["image_size"]),
        ("Train / val / test", _split_counts),
        ("Train time (min)", lambda r: f"{r['timing']['train_seconds'] / 60:.1f}"),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 2: classify the detector's crop (task 3); task 1-2's pretrained run is the "
     "no-crop row", _is_crop_row, _crop_order, [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Crop", lambda r: r["args"].get("crop", "none (task 1-2)")),
        ("Train boxes", lambda r: r["args"].get("train_boxes", "–")
            if r["args"].get("crop", "none") != "none" else "–"),
        ("Test boxes", lambda r: {"gt": "gt (oracle)", "pred": "detector"}.get(
            r["args"].get("test_boxes")) if r["args"].get("crop", "none") != "none" else "–"),
        *ACCURACY,
        ("Detector CorLoc (%)", _detector_pct),
        ("Whole-image test images", lambda r: r["data"]["whole_image_fallback"]["test"]
            if r["args"].get("crop", "none") != "none" else "–"),
        ("Train / val / test", _split_counts),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 2b: the detector (task 3): top box against the true boxes of the test split",
     lambda r: r["task"] == "task3_crop" and r["variant"] == "detector",
     lambda r: r["dataset"], [
        ("Detector", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Weights", lambda r: r["weights"]),
        ("CorLoc (IoU >= 0.5, %)", lambda r: _pct(r["metrics"]["detector_corloc"])),
        ("Mean IoU", lambda r: f"{r['metrics']['detector_miou']:.3f}"
            if r["metrics"]["detector_miou"] is not None else "–"),
        ("No detection", lambda r: r["metrics"]["no_detection"]),
        ("Epochs", lambda r: r["args"]["epochs"]),
        ("Input", lambda r: "x".join(map(str, r["args"]["image_scale"]))),
        ("Train images", lambda r: r["data"]["train"]),
        ("Train time (min)", lambda r: f"{r['timing']['train_seconds'] / 60:.1f}"),
        ("Predict (ms/image)", lambda r: f"{1000 * r['timing']['predict_seconds_per_image']:.0f}"),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 3: DCGAN images added to the training set (task 4); task 1-2's pretrained run "
     "is the row without them", _is_gan_row, lambda r: (r["dataset"], r["task"]), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Training images", lambda r: f"{r['data']['real_train']} real + "
                                      f"{r['data']['synthetic']} DCGAN"
            if r["task"] == "task4_dcgan" else f"{r['data']['train']} real"),
        *ACCURACY,
        ("GAN size", lambda r: r["args"].get("gan_size", "–")),
        ("FID (lite0)", lambda r: f"{r['metrics']['fid']:.1f}" if "fid" in r["metrics"]
            else "–"),
        ("Generated class acc. (%)", lambda r: _pct(r["metrics"].get("gen_class_acc"))),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 4: ViT against CNN, accuracy and cost (task 5)",
     lambda r: r["task"] == "task5_vit", lambda r: (r["dataset"], -r["metrics"]["gflops"]), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Weights", lambda r: r["weights"]),
        ("Recipe", lambda r: r["args"]["recipe"]),
        ("Image size", lambda r: r["args"]["image_size"]),
        *ACCURACY,
        ("Params (M)", lambda r: f"{r['metrics']['params_m']:.2f}"),
        ("GFLOPs (multiply-adds)", lambda r: f"{r['metrics']['gflops']:.2f}"),
        ("Train img/s", lambda r: f"{r['metrics']['train_images_per_s']:.1f}"),
        ("Inference img/s", lambda r: f"{r['metrics']['infer_images_per_s']:.1f}"),
        ("Peak memory (MB)", lambda r: f"{r['metrics']['peak_mem_mb']:.0f}"),
        ("Train time (min)", lambda r: f"{r['metrics']['train_seconds'] / 60:.1f}"),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 5: are the heatmaps right? (task 6) Pointing game and energy in the true boxes "
     "(higher is better); rank correlation with a randomly initialised network's maps (near 1: "
     "the method ignores the model)",
     lambda r: r["task"] == "task6_heatmap" and r["variant"] not in ("classifier", "summary"),
     lambda r: (r["dataset"], r["model"], r["variant"]), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Method", lambda r: r["variant"]),
        ("Layer", lambda r: r["layer"] or "all blocks"),
        ("Pointing game (%)", lambda r: _pct(r["metrics"]["pointing_game"])),
        ("Energy in box (%)", lambda r: _pct(r["metrics"]["energy_in_box"])),
        ("Randomisation rank corr.", lambda r: f"{r['metrics']['randomization_rank_corr']:.3f}"),
        ("Boxes' share of the frame (chance, %)", lambda r: _pct(r["metrics"]["box_area_share"])),
        ("Test images", lambda r: r["data"]["test_scored"]),
        ("Figure", lambda r: "[figure.png]({})".format(
            posixpath.normpath(posixpath.join(r["_dir"], r["figure"])))),
    ]),
    ("Table 6: adversarial robustness (task 7): clean and robust test top-1 (%) under FGSM "
     "and PGD-10 at eps/255 on [0, 1] pixels; standard = task 1-2's model",
     lambda r: r["task"] == "task7_fgsm", lambda r: (r["dataset"], r["variant"] != "standard"), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Training", lambda r: r["variant"] if r["variant"] == "standard" else
            f"{r['variant']} eps {r['args']['adv_eps']:g}/255, p {r['args']['adv_prob']:g} "
            f"per {r['args']['adv_mode']}"),
        ("Clean", lambda r: _pct(r["metrics"]["clean_top1"])),
        *((f"{attack.upper()} {eps}", lambda r, key=f"{attack}@{eps}/255":
           _pct(r["metrics"]["robust_top1"].get(key)))
          for attack in ("fgsm", "pgd10") for eps in (1, 2, 4, 8)),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 7: self-supervised SimCLR against random and ImageNet initialisation (task 8): "
     "test top-1 (%) with a share of the training labels",
     lambda r: r["task"] == "task8_simclr" and r["variant"] in ("random", "simclr", "imagenet"),
     lambda r: (r["dataset"], r["metrics"]["label_fraction"],
                ("random", "simclr", "imagenet").index(r["variant"])), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Labels", lambda r: f"{100 * r['metrics']['label_fraction']:g}% "
                             f"({r['data']['train_labelled']} images)"),
        ("Backbone", lambda r: r["variant"]),
        ("Start weights", lambda r: r["weights"]),
        ("Linear probe", lambda r: _pct(r["metrics"]["linear_top1"])),
        ("kNN", lambda r: _pct(r["metrics"]["knn_top1"])),
        ("Fine-tune", lambda r: _pct(r["metrics"]["finetune_top1"])),
        ("SimCLR epochs / batch", lambda r: f"{r['args']['simclr_epochs']} / "
            f"{r['args']['simclr_batch_size']}" if r["variant"] == "simclr" else "–"),
        ("Device", lambda r: r["env"]["device"]),
    ]),
]


def markdown_table(records: list[dict], columns) -> str:
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for record in records:
        lines.append("| " + " | ".join(str(get(record)) for _, get in columns) + " |")
    return "\n".join(lines)


def write_tables(root: Path) -> Path:
    """`<root>/TABLES.md`: one table per study, rows sorted by dataset, model and variant."""
    records = load_records(root)
    parts = [f"# Results\n\nBuilt from the `metrics.json` files under `{root}` by "
             "`python -m shared.results`. Test accuracy is measured once, with the "
             "best-on-validation weights and deterministic transforms."]
    for title, select, order, columns in STUDIES:
        rows = sorted(filter(select, records), key=order)
        parts.append(f"## {title}\n\n" + (markdown_table(rows, columns) if rows
                                          else "No runs yet."))
    path = Path(root) / "TABLES.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="python -m shared.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", default=Path("results"))
    print(write_tables(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()
