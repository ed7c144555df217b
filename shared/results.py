"""Run records (`<out>/metrics.json`) and the Markdown tables built only from them.

    python -m shared.results results/                 # writes results/TABLES.md
    python -m shared.results compare RUN_A RUN_B      # B - A, paired over the test images
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import posixpath
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from shared import stats
from shared.errors import TestSetMismatch


def git_commit() -> str | None:
    """The checkout's commit, with "-dirty" when files differ from it; None outside git."""
    try:
        return subprocess.run(["git", "describe", "--always", "--dirty", "--abbrev=7"],
                              capture_output=True, text=True, check=True,
                              cwd=Path(__file__).parent).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


STARTED_AT = git_commit()  # read when a run starts: the code it loaded, not what HEAD is later


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
            "git": STARTED_AT}


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
                         data, ci95=fit_result["ci95"], predictions=fit_result["predictions"],
                         history=fit_result["history"], timing=fit_result["timing"])
    record["env"]["channels_last"] = fit_result["channels_last"]
    return record


# ---------------------------------------------------------------------------- predictions


def hits(logits: np.ndarray, labels: np.ndarray, k: int = 1) -> np.ndarray:
    """Whether each image's true class is among its k highest scores: fewer than k classes
    score strictly higher (ties count for the true class; the same rule wherever a figure
    is recomputed, so it equals the one reported)."""
    logits = np.asarray(logits, np.float32)
    own = logits[np.arange(len(labels)), labels]
    return (logits > own[:, None]).sum(axis=1) < k


def save_predictions(path: Path, keys: list[str], labels, logits) -> np.ndarray:
    """`<path>.npz`: `index` (the dataset's image keys), `label` (int64) and `logits`
    (float16, N x classes). Returns the saved float16 logits: the figures reported are
    computed from them, so that the file reproduces them exactly."""
    logits = np.asarray(logits, np.float32).astype(np.float16)
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, index=np.asarray(keys, dtype=str), label=np.asarray(labels, np.int64),
             logits=logits)
    os.replace(tmp, path)
    return logits


def load_predictions(path: Path) -> dict[str, np.ndarray]:
    """A predictions file as arrays (no pickled objects: it cannot run code)."""
    with np.load(path, allow_pickle=False) as saved:
        return {key: saved[key] for key in ("index", "label", "logits")}


def score_predictions(folder: Path, file: str, keys: list[str], labels, logits,
                      accuracies: dict[str, int], write: bool = True) -> dict:
    """One predictions file (written when `write`: the main process) and the accuracies it
    backs, `accuracies` mapping each name to its k (top-k), scored from the file's own
    float16 logits. Returns `merge`d scores plus `logits`, those float16 logits."""
    logits = np.asarray(logits, np.float32).astype(np.float16)
    if write:
        save_predictions(folder / file, keys, labels, logits)
    labels = np.asarray(labels, np.int64)
    scores = merge(*(scored(name, hits(logits, labels, k), file)
                     for name, k in accuracies.items()))
    return {**scores, "logits": logits}


def scored(name: str, correct: np.ndarray, file: str) -> dict:
    """The entries of one accuracy: its value, 95% Wilson interval and predictions file."""
    low, high = stats.wilson_interval(int(np.sum(correct)), len(correct))
    return {"metrics": {name: float(np.mean(correct)) if len(correct) else 0.0},
            "ci95": {name: [low, high]}, "predictions": {name: file}}


def merge(*parts: dict) -> dict:
    """The metrics, ci95 and predictions of `scored` entries (or of any dicts holding some
    of them: a fit result, {"metrics": ...}) merged key by key."""
    merged: dict = {"metrics": {}, "ci95": {}, "predictions": {}}
    for part in parts:
        for key, values in merged.items():
            values.update(part.get(key, {}))
    return merged


def write_json(record: dict, path: Path) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(record, indent=2) + "\n")
    os.replace(tmp, path)


def load_records(root: Path) -> list[dict]:
    """Every metrics.json under `root`, each with `_dir`, its folder relative to `root`, and
    `_path`, the folder itself."""
    return [{**json.loads(p.read_text()), "_dir": p.parent.relative_to(root).as_posix(),
             "_path": str(p.parent)}
            for p in sorted(Path(root).rglob("metrics.json"))]


# --------------------------------------------------------------------------------- tables

DATASET_NAMES = {"bird": "CUB-200-2011", "dog": "Stanford Dogs"}


def _pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def _fixed(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def _detector_pct(r):
    return (_pct(r["metrics"].get("detector_corloc"))
            if r["args"].get("test_boxes") == "pred" and r["args"].get("crop") != "none"
            else "–")


def _split_counts(r):
    return f"{r['data']['train']} / {r['data']['val']} / {r['data']['test']}"


def metric(r: dict, name: str):
    """A metric by name; `key:subkey` reads a nested one (robust_top1:fgsm@4/255)."""
    key, _, sub = name.partition(":")
    value = r["metrics"].get(key)
    return value.get(sub) if sub and isinstance(value, dict) else value


def _with_interval(name: str, scale: float = 100, digits: int = 1, bare=_pct):
    """A column's cell: the metric with its 95% interval, `89.8 (88.2–91.2)` (an accuracy
    in %) or `0.139 (0.128–0.150)` (scale 1, 3 digits); `bare` without an interval."""
    def cell(r):
        value, interval = metric(r, name), r.get("ci95", {}).get(name)
        if value is None or interval is None:
            return bare(value)
        low, high = (scale * v for v in interval)
        return f"{scale * value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f})"
    return cell


def _acc(name: str):
    return _with_interval(name)


SIMCLR_BACKBONES = {"random": "random", "simclr": "SimCLR (from random)",
                    "imagenet": "ImageNet", "imagenet-simclr": "ImageNet → SimCLR"}


def _adversarial_training(r) -> str:
    """Table 6's training cell: the attack, its budget and share, how the epoch was chosen
    and where the catastrophic-overfitting guard stopped the run."""
    if r["variant"] == "standard":
        return "standard"
    a = r["args"]
    guard = r["metrics"].get("overfit_guard") or {}
    stopped = (f"; guard stopped it at epoch {guard['stopped_at_epoch']}"
               if guard.get("stopped_at_epoch") else "")
    return (f"{r['variant']} eps {a['adv_eps']:g}/255, p {a['adv_prob']:g} per "
            f"{a['adv_mode']}; best epoch by {a.get('select', 'clean')} val{stopped}")


def _masking_cell(r) -> str:
    checks = r["metrics"].get("gradient_masking")
    if checks is None:
        return "–"
    return "pass" if checks["passed"] else "FAIL: " + "; ".join(checks["failed"])


ACCURACY = [
    ("Test top-1 (%, 95% CI)", _acc("test_top1")),
    ("Top-5 (%, 95% CI)", _acc("test_top5")),
    ("Best val top-1 (%)", lambda r: _pct(r["metrics"]["best_val_top1"])),
    ("Best epoch", lambda r: f"{r['metrics']['best_epoch']}/{r['args']['epochs']}"),
]
CROPS = {"none": 0, "box": 1, "square": 2}
LOCALISERS = ("detector", "cam", "centre")  # task 3's detect.py variants (Table 2b)


def _is_baseline(r) -> bool:
    """Task 1-2's pretrained runs (any recipe): the rows without a task's change (Tables 2, 3)."""
    return r["task"] == "task1_2_finetune" and r["variant"] == "pretrained"


def _same_recipe(r, o) -> bool:
    """Trained alike: same dataset, model, recipe, image size and epochs."""
    return r["dataset"] == o["dataset"] and r["model"] == o["model"] and all(
        r["args"].get(key, "seed" if key == "recipe" else None)
        == o["args"].get(key, "seed" if key == "recipe" else None)
        for key in ("recipe", "image_size", "epochs"))


def _is_crop_row(r) -> bool:
    return _is_baseline(r) or (r["task"] == "task3_crop" and r["variant"] not in LOCALISERS)


def _is_gan_row(r) -> bool:  # a --gan-only run has no classifier: not a row
    return _is_baseline(r) or (r["task"] == "task4_dcgan" and r["variant"] == "dcgan")


CROP_SOURCES = ("centre", "CAM", "detector", "true boxes")  # Table 2's order: baseline first


def _crop_order(r):
    localiser = r["metrics"].get("localiser", "")
    source = next((i for i, name in enumerate(CROP_SOURCES) if localiser.startswith(name)), -1)
    return (r["dataset"], r["task"] == "task3_crop", source,
            CROPS[r["args"].get("crop", "none")], r["args"].get("tta", "none") != "none",
            r["variant"])


def _crop_cell(r) -> str:
    crop = r["args"].get("crop", "none (task 1-2)")
    return crop + " + whole photo (TTA)" if r["args"].get("tta", "none") != "none" else crop


def _is_cost_row(r) -> bool:
    """Table 4: task 5's runs and task 1-2's with --measure-cost (run_all.sh's strong run, so
    that Table 4 does not train the same CNN again)."""
    return r["task"] == "task5_vit" or (r["task"] == "task1_2_finetune"
                                        and "gflops" in r["metrics"])


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
    ("Table 2: classify the animal's crop (task 3); task 1-2's pretrained runs are the "
     "no-crop rows, each row compared with the one trained alike", _is_crop_row, _crop_order, [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Recipe", lambda r: f"{r['args'].get('recipe', 'seed')}, {r['args']['image_size']} px"),
        ("Crop", _crop_cell),
        ("Localiser", lambda r: r["metrics"].get("localiser", "–")),
        ("Train boxes", lambda r: r["args"].get("train_boxes", "–")
            if r["args"].get("crop", "none") != "none" else "–"),
        ("Test boxes", lambda r: {"gt": "gt (oracle)", "pred": "predicted"}.get(
            r["args"].get("test_boxes")) if r["args"].get("crop", "none") != "none" else "–"),
        *ACCURACY,
        ("Localiser CorLoc (%)", _detector_pct),
        ("Whole-image test images", lambda r: r["data"]["whole_image_fallback"]["test"]
            if r["args"].get("crop", "none") != "none" else "–"),
        ("Train / val / test", _split_counts),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 2b: the localisers (task 3): top box against the true boxes of the test split; "
     "the centre box is the baseline",
     lambda r: r["task"] == "task3_crop" and r["variant"] in LOCALISERS,
     lambda r: (r["dataset"], r["variant"]), [
        ("Localiser", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Weights", lambda r: r["weights"]),
        ("CorLoc (IoU >= 0.5, %)", lambda r: _pct(r["metrics"]["detector_corloc"])),
        ("MaxBoxAcc (%)", lambda r: _pct(r["metrics"].get("max_box_acc"))),
        ("Mean IoU", lambda r: f"{r['metrics']['detector_miou']:.3f}"
            if r["metrics"]["detector_miou"] is not None else "–"),
        ("No detection", lambda r: "–" if r["metrics"]["no_detection"] is None
            else r["metrics"]["no_detection"]),
        ("Epochs", lambda r: r["args"]["epochs"] if r["variant"] == "detector" else "–"),
        ("Input", lambda r: "x".join(map(str, r["args"]["image_scale"]))
            if r["variant"] == "detector" else "–"),
        ("Train images", lambda r: r["data"]["train"]),
        ("Train time (min)", lambda r: f"{r['timing']['train_seconds'] / 60:.1f}"
            if r["variant"] == "detector" else "–"),  # the centre and CAM boxes train nothing
        ("Predict (ms/image)", lambda r: f"{1000 * r['timing']['predict_seconds_per_image']:.0f}"),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 3: DCGAN images added to the training set (task 4); task 1-2's pretrained runs "
     "are the rows without them, each row compared with the one trained alike", _is_gan_row,
     lambda r: (r["dataset"], r["task"]), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Training images", lambda r: f"{r['data']['real_train']} real + "
                                      f"{r['data']['synthetic']} DCGAN"
            if r["task"] == "task4_dcgan" else f"{r['data']['train']} real"),
        ("Recipe", lambda r: f"{r['args'].get('recipe', 'seed')}, {r['args']['image_size']} px"),
        *ACCURACY,
        ("GAN size", lambda r: r["args"].get("gan_size", "–")),
        ("DiffAugment", lambda r: r["args"].get("diffaugment", "none")
            if r["task"] == "task4_dcgan" else "–"),
        ("FID (lite0)", lambda r: f"{r['metrics']['fid']:.1f}" if "fid" in r["metrics"]
            else "–"),
        ("KID x 1000 (± sd over subsets)", lambda r: f"{1000 * r['metrics']['kid']:.1f} ± "
            f"{1000 * r['metrics']['kid_std']:.1f}" if "kid" in r["metrics"] else "–"),
        ("Generated class acc. (%)", lambda r: _pct(r["metrics"].get("gen_class_acc"))),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 4: ViT against CNN, accuracy and cost (task 5; a task 1-2 run that measured its "
     "cost is a row too)", _is_cost_row, lambda r: (r["dataset"], -r["metrics"]["gflops"]), [
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
    ("Table 5: are the heatmaps right? (task 6) Deletion AUC (lower is better) and insertion "
     "AUC (higher is better) of the target class's probability as the map's pixels, most "
     "salient first, are set to the photo's mean colour or put back onto it; pointing game "
     "and energy in the true boxes where boxes exist (higher is better); rank correlation "
     "with a randomly initialised network's maps (near 1: the method ignores the model). The "
     "random and centre maps are baselines",
     lambda r: r["task"] == "task6_heatmap" and r["variant"] not in ("classifier", "summary"),
     lambda r: (r["dataset"], r["model"], r["variant"] in ("random", "centre"), r["variant"]), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Method", lambda r: r["variant"]),
        ("Layer", lambda r: r["layer"] or ("all blocks" if r["variant"] == "rollout" else "–")),
        ("Deletion AUC (95% CI)", _with_interval("deletion_auc", 1, 3, _fixed)),
        ("Insertion AUC (95% CI)", _with_interval("insertion_auc", 1, 3, _fixed)),
        ("Pointing game (%)", lambda r: _pct(r["metrics"]["pointing_game"])),
        ("Energy in box (%)", lambda r: _pct(r["metrics"]["energy_in_box"])),
        ("Randomisation rank corr.", lambda r: _fixed(r["metrics"]["randomization_rank_corr"])),
        ("Boxes' share of the frame (chance, %)", lambda r: _pct(r["metrics"]["box_area_share"])),
        ("Test images (with boxes)", lambda r: f"{r['data']['test_scored']} "
                                              f"({r['data'].get('test_with_boxes', '–')})"),
        ("Figure", lambda r: "[figure.png]({})".format(
            posixpath.normpath(posixpath.join(r["_dir"], r["figure"])))),
    ]),
    ("Table 6: adversarial robustness (task 7): clean and worst-case robust test top-1 (%) "
     "at eps/255 on [0, 1] pixels, an image robust only if it survives FGSM and every PGD "
     "restart; masking: Carlini et al. 2019's checks (a failed one means the robust figures "
     "are not to be trusted); standard = task 1-2's model",
     lambda r: r["task"] == "task7_fgsm", lambda r: (r["dataset"], r["variant"] != "standard",
                                                    r["variant"]), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Training", _adversarial_training),
        ("Clean", _acc("clean_top1")),
        *((f"Worst {eps}", _acc(f"robust_top1:worst@{eps}/255")) for eps in (1, 2, 4, 8)),
        ("Attacks (test images)", lambda r: f"FGSM + PGD-{r['args']['pgd_steps']} x "
            f"{r['args'].get('restarts', 1)} "
            f"({r['data'].get('test_attacked', r['data']['test'])})"),
        ("Masking checks", _masking_cell),
        ("Device", lambda r: r["env"]["device"]),
    ]),
    ("Table 7: self-supervised SimCLR against random and ImageNet initialisation (task 8): "
     "test top-1 (%) with a share of the training labels (or N photos a class)",
     lambda r: r["task"] == "task8_simclr" and r["variant"] in SIMCLR_BACKBONES,
     lambda r: (r["dataset"], r["metrics"]["label_fraction"],
                list(SIMCLR_BACKBONES).index(r["variant"])), [
        ("Model", lambda r: r["model"]),
        ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
        ("Labels", lambda r: (r["metrics"].get("label_budget")  # older runs: the share
                              or f"{100 * r['metrics']['label_fraction']:g}%")
                             + f" ({r['data']['train_labelled']} images)"),
        ("Backbone", lambda r: SIMCLR_BACKBONES[r["variant"]]),
        ("Start weights", lambda r: r["weights"]),
        ("Linear probe", _acc("linear_top1")),
        ("kNN", _acc("knn_top1")),
        ("Fine-tune", _acc("finetune_top1")),
        ("SimCLR epochs / batch / optimiser", lambda r: f"{r['args']['simclr_epochs']} / "
            f"{r['args']['simclr_batch_size']} / {r['args']['simclr_optimizer']}"
            if "simclr" in r["variant"] else "–"),
        ("Final val kNN (monitor)", lambda r: _pct(
            (r.get("pretrain_history") or [{}])[-1].get("val_knn_top1"))),
        ("Device", lambda r: r["env"]["device"]),
    ]),
]


# ----------------------------------------------------------------------- paired comparisons


def _first(rows, test):
    return next((o for o in rows if test(o)), None)


def _same_setting(r, o) -> bool:
    return r["dataset"] == o["dataset"] and r["model"] == o["model"]


def _table1_reference(r, rows):
    """pretrained against baseline, strong against the seed recipe's pretrained."""
    if r["variant"] == "baseline":
        return None
    if r["args"].get("recipe", "seed") == "seed":
        return _first(rows, lambda o: _same_setting(r, o) and o["variant"] == "baseline")
    return _first(rows, lambda o: _same_setting(r, o) and _is_baseline(o))


def _baseline_reference(r, rows):
    """Tables 2 and 3: every row against task 1-2's pretrained run trained alike (a strong
    recipe's crop row against the strong recipe's whole photos); none if there is none."""
    return None if _is_baseline(r) else _first(
        rows, lambda o: _is_baseline(o) and _same_recipe(r, o))


def _first_of_dataset(r, rows):
    first = _first(rows, lambda o: o["dataset"] == r["dataset"])
    return None if first is r else first


def _standard_reference(r, rows):
    return None if r["variant"] == "standard" else _first(
        rows, lambda o: o["variant"] == "standard" and o["dataset"] == r["dataset"])


def _imagenet_reference(r, rows):
    return None if r["variant"] == "imagenet" else _first(
        rows, lambda o: o["variant"] == "imagenet" and o["dataset"] == r["dataset"]
        and o["metrics"]["label_fraction"] == r["metrics"]["label_fraction"])


def _attacks_compared(rows) -> list[tuple[str, str]]:
    """Table 6: clean and every worst-case budget that a row has predictions for."""
    attacks = {name for r in rows for name in r.get("predictions", {})
               if name.startswith("robust_top1:worst@")}

    def order(name):
        attack, eps = name.removeprefix("robust_top1:").split("@")
        return attack, float(eps.removesuffix("/255"))
    return [("clean", "clean_top1"),
            *((name.removeprefix("robust_top1:").upper(), name) for name in sorted(attacks,
                                                                                   key=order))]


# Per table (by the start of its title): each row's reference row, the compared accuracies
# (column label, metric name; or a function of the rows giving them) and what the reference
# is called in the header.
COMPARISONS = {
    "Table 1": (_table1_reference, [("top-1", "test_top1")], "its reference"),
    "Table 2": (_baseline_reference, [("top-1", "test_top1")], "the whole photo"),
    "Table 3": (_baseline_reference, [("top-1", "test_top1")], "no DCGAN images"),
    "Table 4": (_first_of_dataset, [("top-1", "test_top1")], "the first model"),
    "Table 6": (_standard_reference, _attacks_compared, "standard"),
    "Table 7": (_imagenet_reference, [("linear", "linear_top1"), ("kNN", "knn_top1"),
                                      ("fine-tune", "finetune_top1")], "ImageNet"),
}


def _correct_of(run: dict, name: str, cache: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(image keys, whether each was right) for one accuracy of a run, from its predictions
    file; None for a run that has none (an older one)."""
    file = run.get("predictions", {}).get(name)
    if file is None:
        return None
    path = Path(run["_path"]) / file
    if path not in cache:
        cache[path] = load_predictions(path)
    saved = cache[path]
    k = 5 if name.partition(":")[0].endswith("top5") else 1
    return saved["index"], hits(saved["logits"], saved["label"], k)


def paired_difference(run: dict, reference: dict, name: str, cache: dict | None = None,
                      resamples: int = 2000, seed: int = 0) -> dict | None:
    """`run` minus `reference` on `name`, over the same test images: the difference in
    points with a paired bootstrap 95% interval, and McNemar's exact p. Different test
    images are an error naming both runs."""
    cache = {} if cache is None else cache
    a, b = _correct_of(reference, name, cache), _correct_of(run, name, cache)
    if a is None or b is None:
        return None
    if len(a[0]) != len(b[0]) or not np.array_equal(a[0], b[0]):
        raise TestSetMismatch(
            f"{run['_dir']} and {reference['_dir']} were tested on different images "
            f"({len(b[0])} and {len(a[0])}): {name} cannot be compared")
    difference, low, high = stats.paired_bootstrap(a[1], b[1], resamples, seed)
    return {"name": name, "difference": 100 * difference, "ci95": [100 * low, 100 * high],
            "mcnemar_p": stats.mcnemar_p(a[1], b[1]), "images": len(a[1])}


def _difference_cell(found: dict | None) -> str:
    if found is None:
        return "–"
    low, high = found["ci95"]
    return f"{found['difference']:+.1f} ({low:+.1f}–{high:+.1f}), p {found['mcnemar_p']:.2g}"


def comparison_columns(title: str, rows: list[dict], cache: dict) -> list:
    """The paired-difference columns of a study, if it has a reference."""
    if title.split(":")[0] not in COMPARISONS:
        return []
    reference_of, compared, called = COMPARISONS[title.split(":")[0]]
    compared = compared(rows) if callable(compared) else compared

    def column(label, name):
        def cell(r):
            reference = reference_of(r, rows)
            return "–" if reference is None else _difference_cell(
                paired_difference(r, reference, name, cache))
        return (f"Δ {label} vs {called} (points, 95% CI; McNemar p)", cell)
    return [column(label, name) for label, name in compared]


def _figures_cell(r) -> str:
    folder = Path(r["_path"])
    links = [f"[{label}]({posixpath.join(r['_dir'], file)})"
             for label, file in (("pairs", "confusions.png"), ("matrix", "confusion_matrix.png"),
                                 ("per class", "per_class.csv")) if (folder / file).exists()]
    return ", ".join(links) or "–"


FIGURED = ("Table 1", "Table 2", "Table 3", "Table 4")  # classifier tables: confusion links


def markdown_table(records: list[dict], columns) -> str:
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for record in records:
        lines.append("| " + " | ".join(str(get(record)) for _, get in columns) + " |")
    return "\n".join(lines)


def write_tables(root: Path) -> Path:
    """`<root>/TABLES.md`: one table per study, rows sorted by dataset, model and variant,
    accuracies with their 95% Wilson intervals and, where a table has a reference row, the
    paired difference from it."""
    records = load_records(root)
    parts = [f"# Results\n\nBuilt from the `metrics.json` files under `{root}` by "
             "`python -m shared.results`. Test accuracy is measured once, with the "
             "best-on-validation weights and deterministic transforms. Intervals are 95% "
             "Wilson score intervals; a difference from a reference row is paired over the "
             "same test images (bootstrap over images, 2,000 resamples, seeded) with the "
             "exact McNemar p-value."]
    cache: dict = {}
    for title, select, order, columns in STUDIES:
        rows = sorted(filter(select, records), key=order)
        columns = [*columns, *comparison_columns(title, rows, cache)]
        if title.split(":")[0] in FIGURED:
            columns.append(("Confusions", _figures_cell))
        parts.append(f"## {title}\n\n" + (markdown_table(rows, columns) if rows
                                          else "No runs yet."))
    path = Path(root) / "TABLES.md"
    path.write_text("\n\n".join(parts) + "\n")
    return path


def compare(run_a: Path, run_b: Path) -> list[dict]:
    """Every accuracy the two runs share, B minus A, paired over their test images."""
    a, b = (_record_of(Path(run)) for run in (run_a, run_b))
    names = [n for n in a.get("predictions", {}) if n in b.get("predictions", {})]
    if not names:
        raise TestSetMismatch(f"{run_a} and {run_b} share no accuracy with a predictions file")
    cache: dict = {}
    return [paired_difference(b, a, name, cache) for name in names]


def _record_of(folder: Path) -> dict:
    path = folder / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no metrics.json (expected a run folder)")
    return {**json.loads(path.read_text()), "_dir": str(folder), "_path": str(folder)}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(
            prog="python -m shared.results compare",
            description="B minus A on every accuracy both runs report, paired over their "
                        "test images: the difference in points, its paired bootstrap 95% "
                        "interval and McNemar's exact p")
        parser.add_argument("run_a", type=Path)
        parser.add_argument("run_b", type=Path)
        args = parser.parse_args(argv[1:])
        try:
            found = compare(args.run_a, args.run_b)
        except (TestSetMismatch, OSError, KeyError, ValueError) as e:
            sys.exit(f"error: {e}")
        print(f"B = {args.run_b} minus A = {args.run_a}\n")
        print("| accuracy | images | B - A (points) | 95% CI | McNemar p |\n|---|---|---|---|---|")
        for row in found:
            low, high = row["ci95"]
            print(f"| {row['name']} | {row['images']} | {row['difference']:+.2f} | "
                  f"{low:+.2f} – {high:+.2f} | {row['mcnemar_p']:.3g} |")
        return
    parser = argparse.ArgumentParser(prog="python -m shared.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", default=Path("results"))
    print(write_tables(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()
