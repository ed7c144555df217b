"""Run records (`<out>/metrics.json`) and the Markdown tables built only from them.

    python -m shared.results results/                 # writes results/TABLES.md
    python -m shared.results compare RUN_A RUN_B      # B - A, paired over the test images
    python -m shared.results compare --a A0 A1 A2 --b B0 B1 B2   # over seeds
    python -m shared.results check-kept RUN           # a run trained again = its kept record
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import posixpath
import re
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from shared import figures, stats
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


def task_record(task: str, variant: str, flags: dict, rt, metrics: dict, data: dict, *,
                model: str | None = None, weights=None, **fields) -> dict:
    """The metrics.json of one run: what ran (task, variant, dataset, model, weights, and
    every flag as `args`), on what (env), and its numbers; `fields` adds task-specific keys
    (timing, ...)."""
    return {
        "task": task, "variant": variant, "dataset": flags["dataset"],
        "model": model or flags["model"],
        "weights": str(flags["weights"] if weights is None else weights),
        "metrics": metrics, "data": data, "env": environment(rt), **fields,
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in flags.items()},
    }


def make_record(task: str, variant: str, flags: dict, rt, data: dict, fit_result: dict,
                **task_metrics) -> dict:
    """The metrics.json of a training run (`fit`'s result). Accuracies are fractions."""
    record = task_record(task, variant, flags, rt, {**fit_result["metrics"], **task_metrics},
                         data, ci95=fit_result["ci95"], predictions=fit_result["predictions"],
                         history=fit_result["history"], timing=fit_result["timing"])
    record["env"]["channels_last"] = fit_result["channels_last"]
    if fit_result.get("gates"):
        record["gates"] = fit_result["gates"]
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


def save_per_image(path: Path, keys: list[str], values: dict[str, list[float]]) -> None:
    """`<path>.npz`: `index` (the dataset's image keys) and, for each metric that is a mean
    over images (a heatmap's deletion AUC), its per-image values (float64): what an interval
    over seeds and images is drawn from. A record names it in `per_image`, as
    `{metric: file}`."""
    tmp = path.with_name(path.name + ".tmp.npz")
    np.savez(tmp, index=np.asarray(keys, dtype=str),
             **{name: np.asarray(v, np.float64) for name, v in values.items()})
    os.replace(tmp, path)


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
    of them: a fit result, {"metrics": ...}) merged key by key, and their `gates` in
    order."""
    merged: dict = {"metrics": {}, "ci95": {}, "predictions": {}}
    gates = [gate for part in parts for gate in part.get("gates", [])]
    for part in parts:
        for key, values in merged.items():
            values.update(part.get(key, {}))
    return merged | ({"gates": gates} if gates else {})


def gate(name: str, value: float | None, threshold: float, passed: bool,
         judges: list[str] | None = None) -> dict:
    """A precondition, measured on validation, that a method did its job at the run's
    budget (a GAN whose images are recognised, training that left robustness): metrics.json
    keeps a run's in `gates`, and a table shows "did not work at this budget" instead of a
    verdict on a row whose gate failed: every verdict, or those on the metrics it `judges`.
    `value` None: it could not be measured (not passed)."""
    return {"name": name, "value": value, "threshold": threshold,
            "passed": bool(passed) and value is not None} | (
        {"judges": judges} if judges else {})


def failed_gates(r: dict, metric_name: str | None = None) -> list[dict]:
    """The row's failed gates (those that judge `metric_name`, if given)."""
    return [g for g in r.get("gates", []) if not g["passed"] and (
        metric_name is None or "judges" not in g or metric_name in g["judges"])]


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


# ----------------------------------------------------------------------------- seed groups
# A row trained with several seeds is one folder per seed: a path part `seed0`, `seed1`, ...
# (run_all.sh --seeds N: <results>/seedK/...). Runs whose paths differ only there are one
# row: its accuracies are means over the seeds, with an interval over seeds and test photos.

SEED_PART = re.compile(r"seed(\d+)")
SEED_FOLDER = re.compile(r"(?<![^/])seed(\d+)(?![^/])")  # a path's seedK folder


def row_key(r: dict) -> str:
    """A run's folder with its seedK part left out: the row it belongs to."""
    return "/".join(p for p in r["_dir"].split("/") if not SEED_PART.fullmatch(p))


def seed_of(r: dict) -> str:
    """The seedK part of a run's folder ("" for a run outside any)."""
    return next((p for p in r["_dir"].split("/") if SEED_PART.fullmatch(p)), "")


def _mean_of(values: list):
    """The mean of numbers (a dict of them: per key); anything else: the first's."""
    first = values[0]
    if isinstance(first, dict):
        return {k: _mean_of([v.get(k) for v in values]) for k in first}
    if _numbers(values):
        return first if all(v == first for v in values) else float(np.mean(values))
    return first


def seed_group(members: list[dict], cache: dict | None = None) -> dict:
    """Runs of one row with different seeds as one record: numbers (metrics, gate values)
    are means over the seeds (a gate's threshold too, where each seed has its own), a gate
    passes only if it passed for every seed (one a seed lacks is not measured), each
    metric backed by per-image files (an accuracy's
    predictions, a mean's `per_image` values) gets `stats.two_level_bootstrap`'s interval
    (over seeds and test photos) and its spread over the seeds (`spread`: sd, or the two
    values for 2 seeds); `_seeds` holds the members.
    One run is returned as it is (its Wilson interval kept). Members tested on different
    images are an error naming them."""
    members = sorted(members, key=lambda r: int(SEED_PART.fullmatch(seed_of(r) or "seed0")[1]))
    if len(members) == 1:
        return {**members[0], "_seeds": members}
    cache = {} if cache is None else cache
    first = members[0]
    group = {**first, "_dir": row_key(first), "_seeds": members, "ci95": {}, "spread": {}}
    for key, merge in (("metrics", _mean_of), ("weights", _across_seeds)):
        if key in first:  # a run's summary record (task 8's) holds neither
            group[key] = merge([r[key] for r in members])
    names = list(dict.fromkeys(g["name"] for r in members for g in r.get("gates", [])))
    if names:  # matched by name; a seed without the gate leaves it unmeasured (not passed)
        by_seed = [{g["name"]: g for g in r.get("gates", [])} for r in members]
        group["gates"] = []
        for name in names:
            gates = [found.get(name) for found in by_seed]
            measured = all(g is not None and g["value"] is not None for g in gates)
            passed = sum(g is not None and g["passed"] for g in gates)
            group["gates"].append(
                {**next(g for g in gates if g is not None),
                 "value": float(np.mean([g["value"] for g in gates])) if measured else None,
                 # each seed's own (a FID baseline's): their mean beside the values' mean
                 "threshold": _mean_of([g["threshold"] for g in gates if g is not None]),
                 "passed": measured and passed == len(gates),
                 "seeds_passed": [passed, len(gates)]})
    backed = [(name, _correct_of) for name in first.get("predictions", {})] + [
        (name, _per_image_of) for name in first.get("per_image", {})]
    for name, read in backed:
        found = [read(r, name, cache) for r in members]
        if any(f is None for f in found):
            continue
        _same_images([r["_dir"] for r in members], [f[0] for f in found], name)
        values = np.stack([f[1] for f in found])  # (seeds, images)
        _, low, high = stats.two_level_bootstrap(values)
        group["ci95"][name] = [low, high]
        group["spread"][name] = _spread(values.mean(axis=1))
    return group


def _numbers(values: list) -> bool:
    return all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)


def _spread(per_seed: np.ndarray):
    """Seeds' values: both for 2 seeds, else their sd."""
    return per_seed.tolist() if len(per_seed) == 2 else float(per_seed.std(ddof=1))


def _across_seeds(values: list[str]) -> str:
    """One text for a row over seeds: the seeds' common value; or, where each seed's run read
    its own seed's file, the path with its seed folder as `seed{0,1,2}`; else each value."""
    if len(set(values)) == 1:
        return values[0]
    if len({SEED_FOLDER.sub("seed", v) for v in values}) == 1:
        numbers = ",".join(dict.fromkeys(n for v in values for n in SEED_FOLDER.findall(v)))
        return SEED_FOLDER.sub(f"seed{{{numbers}}}", values[0])
    return "; ".join(values)


def _same_images(names: list[str], indexes: list[np.ndarray], what: str) -> None:
    for name, index in zip(names[1:], indexes[1:], strict=True):
        if len(index) != len(indexes[0]) or not np.array_equal(index, indexes[0]):
            raise TestSetMismatch(f"{name} and {names[0]} were tested on different images "
                                  f"({len(index)} and {len(indexes[0])}): {what} cannot be "
                                  "compared or pooled over seeds")


def seed_groups(records: list[dict], cache: dict | None = None) -> list[dict]:
    """Every row's runs (`row_key`) as one record (`seed_group`), in the records' order."""
    rows: dict[str, list[dict]] = {}
    for r in records:
        rows.setdefault(row_key(r), []).append(r)
    return [seed_group(members, cache) for members in rows.values()]


def seeds_cell(r: dict) -> str:
    n = len(r.get("_seeds", [r]))
    return f"{n} seed" + ("s" if n > 1 else "")


SEEDS = ("Seeds", seeds_cell)


# --------------------------------------------------------------------------------- tables
# A table is declared in its task's folder (`<task folder>/table.py`, a `TABLES` list of
# `Table`s); `write_tables` finds every declaration beside shared/ and builds TABLES.md. The
# helpers below are for those declarations: cells, and which runs are alike.

DATASET_NAMES = {"bird": "CUB-200-2011", "dog": "Stanford Dogs"}


def pct(value) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def fixed(value) -> str:
    return "–" if value is None else f"{value:.3f}"


def split_counts(r) -> str:
    return f"{r['data']['train']} / {r['data']['val']} / {r['data']['test']}"


def metric(r: dict, name: str):
    """A metric by name; `key:subkey` reads a nested one (robust_top1:fgsm@4/255)."""
    key, _, sub = name.partition(":")
    value = r["metrics"].get(key)
    return value.get(sub) if sub and isinstance(value, dict) else value


def with_interval(name: str, scale: float = 100, digits: int = 1, bare=pct):
    """A column's cell: the metric with its 95% interval, `89.8 (88.2–91.2)` (an accuracy
    in %) or `0.139 (0.128–0.150)` (scale 1, 3 digits), and a row over several seeds its
    spread, `89.8 (87.9–91.5; sd 0.7)`; `bare` without an interval."""
    def cell(r):
        value, interval = metric(r, name), r.get("ci95", {}).get(name)
        if value is None or interval is None:
            return bare(value)
        low, high = (scale * v for v in interval)
        spread = _spread_text(r.get("spread", {}).get(name), scale, digits)
        return (f"{scale * value:.{digits}f} ({low:.{digits}f}–{high:.{digits}f}"
                f"{'; ' + spread if spread else ''})")
    return cell


def _spread_text(spread, scale: float, digits: int) -> str:
    """`sd 0.7` (3 seeds or more), `seeds 88.0, 89.9` (2), '' (None: one run)."""
    if spread is None:
        return ""
    if isinstance(spread, list):
        return f"seeds {', '.join(f'{scale * v:.{digits}f}' for v in spread)}"
    return f"sd {scale * spread:.{digits}f}"


def mean_and_spread(values: list, scale: float = 1, digits: int = 1) -> str:
    """A number each seed's run has (one run: one value) as a cell: their mean, and their
    spread where they differ, `153.8 (sd 4.1)`; '–' where a run lacks it."""
    if not values or not _numbers(values):
        return "–"
    spread = _spread(np.array(values, float)) if len(set(values)) > 1 else None
    text = _spread_text(spread, scale, digits)
    return f"{scale * float(np.mean(values)):.{digits}f}" + (f" ({text})" if text else "")


def with_spread(name: str, scale: float = 1, digits: int = 1):
    """A column's cell for a metric without per-image values (a FID): `mean_and_spread` of
    its value in each seed's run."""
    return lambda r: mean_and_spread([metric(m, name) for m in r.get("_seeds", [r])],
                                     scale, digits)


ACCURACY = [  # a classifier's columns
    ("Test top-1 (%, 95% CI)", with_interval("test_top1")),
    ("Top-5 (%, 95% CI)", with_interval("test_top5")),
    ("Best val top-1 (%)", lambda r: pct(r["metrics"]["best_val_top1"])),
    ("Best epoch", lambda r: f"{r['metrics']['best_epoch']:.3g}/{r['args']['epochs']}"),
]
MODEL = ("Model", lambda r: r["model"])
DATASET = ("Dataset", lambda r: DATASET_NAMES[r["dataset"]])
DEVICE = ("Device", lambda r: r["env"]["device"])


def first(rows: list[dict], test) -> dict | None:
    return next((o for o in rows if test(o)), None)


def trained_alike(r: dict, o: dict) -> bool:
    """Same dataset, model, recipe, image size and epochs."""
    return r["dataset"] == o["dataset"] and r["model"] == o["model"] and all(
        r["args"].get(key, "seed" if key == "recipe" else None)
        == o["args"].get(key, "seed" if key == "recipe" else None)
        for key in ("recipe", "image_size", "epochs"))


@dataclass
class Table:
    """One table of TABLES.md: its title ("Table N: ..."), which records are its rows and
    their order, its columns (header, cell of a record); with a `reference` (row, rows ->
    the row it is compared with, or None), one paired-difference column per `compared`
    accuracy ((label, metric name) pairs, or a function of the rows giving them), the
    reference called `reference_name` in the header; `confusions` adds links to each
    row's confusion figures."""
    title: str
    rows: Callable[[dict], bool]
    order: Callable[[dict], tuple]
    columns: list
    reference: Callable | None = None
    compared: list | Callable = ()
    reference_name: str = ""
    confusions: bool = False

    @property
    def number(self) -> tuple[int, str]:  # "Table 2b: ..." -> (2, "b"), for the order
        found = re.match(r"Table (\d+)(\w*)", self.title)
        return (int(found[1]), found[2]) if found else (10**6, self.title)


REPOSITORY = Path(__file__).resolve().parents[1]  # the folder holding shared/ and the tasks


def declared_tables(repository: Path = REPOSITORY) -> list[Table]:
    """Every `TABLES` of a `table.py` in a folder beside shared/, by table number. Loaded by
    path, so a task folder works under any name (the module is named `<folder>.table`, as
    mutation testing names it)."""
    tables = []
    for path in sorted(repository.glob("*/table.py")):
        spec = importlib.util.spec_from_file_location(f"{path.parent.name}.table", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        tables += module.TABLES
    return sorted(tables, key=lambda table: table.number)


# ----------------------------------------------------------------------- paired comparisons


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


def _per_image_of(run: dict, name: str, cache: dict) -> tuple[np.ndarray, np.ndarray] | None:
    """(image keys, per-image values) of a metric that is a mean over images, from the
    run's `per_image` file; None for a run without one (an older one)."""
    file = run.get("per_image", {}).get(name)
    if file is None:
        return None
    path = Path(run["_path"]) / file
    if path not in cache:
        with np.load(path, allow_pickle=False) as saved:  # arrays only: it cannot run code
            cache[path] = {key: saved[key] for key in saved.files}
    return cache[path]["index"], cache[path][name]


def paired_difference(run: dict, reference: dict, name: str, cache: dict | None = None,
                      resamples: int = 2000, seed: int = 0, by_seed: bool = True
                      ) -> dict | None:
    """`run` minus `reference` on `name`, over the same test images: the difference in
    points with a paired bootstrap 95% interval, and McNemar's exact p. Rows over several
    seeds (`seed_group`) pair seed k with seed k: the mean difference,
    `stats.two_level_bootstrap`'s interval over seeds and images, each seed's difference and
    McNemar p, and how many seeds agree with the mean's sign. With `by_seed`,
    runs in seedK folders pair by seed, over the seeds both rows have (a study part-done),
    which `seeds` counts and `unpaired` names; without, in their order. Different test
    images are an error naming both runs."""
    cache = {} if cache is None else cache
    references, runs, unpaired = _paired_seeds(reference, run, name, by_seed)
    pairs = [(_correct_of(a, name, cache), _correct_of(b, name, cache))
             for a, b in zip(references, runs, strict=True)]
    if any(a is None or b is None for a, b in pairs):
        return None
    _same_images([r["_dir"] for r in (*references, *runs)],
                 [found[0] for pair in pairs for found in pair], name)
    per_seed = [{"difference": 100 * float(b[1].mean() - a[1].mean()),
                 "mcnemar_p": stats.mcnemar_p(a[1], b[1])} for a, b in pairs]
    if len(pairs) == 1:
        difference, low, high = stats.paired_bootstrap(*(found[1] for found in pairs[0]),
                                                       resamples, seed)
    else:
        difference, low, high = stats.two_level_bootstrap(
            np.stack([b[1].astype(float) - a[1] for a, b in pairs]), resamples, seed)
    sign = np.sign(difference)
    return {"name": name, "difference": 100 * difference, "ci95": [100 * low, 100 * high],
            "mcnemar_p": per_seed[0]["mcnemar_p"] if len(pairs) == 1 else None,
            "images": len(pairs[0][0][1]), "seeds": len(pairs),
            "seeds_agreeing": sum(np.sign(d["difference"]) == sign for d in per_seed),
            "per_seed": per_seed, "unpaired": unpaired}


def _paired_seeds(reference: dict, run: dict, name: str, by_seed: bool
                  ) -> tuple[list, list, list[str]]:
    """The two rows' runs paired seed with seed, and the seeds only one row has (sorted)."""
    references, runs = reference.get("_seeds", [reference]), run.get("_seeds", [run])
    seeds = [{seed_of(r): r for r in side} for side in (references, runs)]
    if by_seed and all("" not in found and len(found) == len(side)
           for found, side in zip(seeds, (references, runs), strict=True)):
        common = [seed for seed in seeds[0] if seed in seeds[1]]
        if common:
            return ([seeds[0][seed] for seed in common], [seeds[1][seed] for seed in common],
                    sorted(seeds[0].keys() ^ seeds[1].keys()))
        raise TestSetMismatch(f"{run['_dir']} and {reference['_dir']} share no seed "
                              f"({', '.join(seeds[1])} against {', '.join(seeds[0])}): "
                              f"{name} is compared seed by seed")
    if len(runs) != len(references):
        raise TestSetMismatch(f"{run['_dir']} has {len(runs)} seeds and {reference['_dir']} "
                              f"{len(references)}: {name} is compared seed by seed")
    return references, runs, []


def _difference_cell(found: dict | None) -> str:
    if found is None:
        return "–"
    low, high = found["ci95"]
    shown = f"{found['difference']:+.1f} ({low:+.1f}–{high:+.1f})"
    if found["seeds"] == 1:
        shown += f", p {found['mcnemar_p']:.2g}"
    else:
        shown += f", {found['seeds_agreeing']}/{found['seeds']} seeds agree"
    if found.get("unpaired"):  # a study part-done: say what the difference leaves out
        shown += f" (seeds both rows have; not {', '.join(found['unpaired'])})"
    return shown


def comparison_columns(table: Table, rows: list[dict], cache: dict,
                       found: list | None = None) -> list:
    """The paired-difference columns of a table, if it has a reference; each difference
    shown is also appended to `found` (row, label, difference), for the forest plot."""
    if table.reference is None:
        return []
    compared = table.compared(rows) if callable(table.compared) else table.compared
    several = any(len(r.get("_seeds", [r])) > 1 for r in rows)

    def column(label, name):
        def cell(r):
            reference = table.reference(r, rows)
            if reference is None:
                return "–"
            if failed_gates(r, name):  # no verdict on a method that did not do its job
                return "did not work at this budget"
            difference = paired_difference(r, reference, name, cache)
            if difference is not None and found is not None:
                found.append((r["_dir"], label, difference))
            return _difference_cell(difference)
        test = "McNemar p, or seeds agreeing" if several else "McNemar p"
        return (f"Δ {label} vs {table.reference_name} (points, 95% CI; {test})", cell)
    return [column(label, name) for label, name in compared]


def _gates_cell(r) -> str:
    """Each gate: its name, value and threshold, pass or FAIL; over seeds the value is
    their mean and the cell says how many seeds passed (a mean above the threshold can
    FAIL: one seed below it)."""
    def shown(value):
        return "not measured" if value is None else f"{value:.3g}"

    def verdict(g):
        word = "pass" if g["passed"] else "FAIL"
        if "seeds_passed" not in g:
            return word
        passed, seeds = g["seeds_passed"]
        return f"{word}, {passed}/{seeds} seeds pass"

    return "; ".join(f"{g['name']}: {'mean ' if 'seeds_passed' in g else ''}"
                     f"{shown(g['value'])} (threshold {g['threshold']:g}) {verdict(g)}"
                     for g in r.get("gates", [])) or "–"


GATES = ("Gate: did the method work? (validation)", _gates_cell)


def _figures_cell(r) -> str:
    """Links to the row's confusion figures; a row over seeds links its first seed's."""
    seeds = r.get("_seeds", [r])
    run = seeds[0]
    links = [f"[{label}]({posixpath.join(run['_dir'], file)})"
             for label, file in (("pairs", "confusions.png"), ("matrix", "confusion_matrix.png"),
                                 ("per class", "per_class.csv"))
             if (Path(run["_path"]) / file).exists()]
    if not links:
        return "–"
    return ", ".join(links) if len(seeds) == 1 else f"{seed_of(run)}: " + ", ".join(links)


def markdown_table(records: list[dict], columns) -> str:
    lines = ["| " + " | ".join(header for header, _ in columns) + " |",
             "|" + "---|" * len(columns)]
    for record in records:
        lines.append("| " + " | ".join(str(get(record)) for _, get in columns) + " |")
    return "\n".join(lines)


def write_tables(root: Path, tables: list[Table] | None = None) -> Path:
    """`<root>/TABLES.md`: each declared table (`declared_tables`, or `tables`), its rows
    sorted as it says, accuracies with their 95% Wilson intervals, the rows' gates where
    they have any and, where a table has a reference row, the paired difference from it
    (unless the row's gate failed)."""
    cache: dict = {}
    records = seed_groups(load_records(root), cache)
    parts = [f"# Results\n\nBuilt from the `metrics.json` files under `{root}` by "
             "`python -m shared.results`. Test accuracy is measured once, with the "
             "best-on-validation weights and deterministic transforms. Intervals are 95% "
             "Wilson score intervals; a difference from a reference row is paired over the "
             "same test images (bootstrap over images, 2,000 resamples, seeded) with the "
             "exact McNemar p-value. A row over several seeds shows the mean over them, an "
             "interval over seeds and test photos (a two-level bootstrap) and the spread "
             "over seeds; its differences pair seed with seed and say how many agree in sign. "
             "Every comparison is plotted in [differences.png](differences.png)."]
    panels = []
    for table in declared_tables() if tables is None else tables:
        rows = sorted(filter(table.rows, records), key=table.order)
        gated = [GATES] if any(r.get("gates") for r in rows) else []
        compared: list = []
        columns = [*table.columns, SEEDS, *gated,
                   *comparison_columns(table, rows, cache, compared)]
        if table.confusions:
            columns.append(("Confusions", _figures_cell))
        parts.append(f"## {table.title}\n\n" + (markdown_table(rows, columns) if rows
                                                else "No runs yet."))
        if compared:
            panels.append((table.title.split(":")[0], compared))
    path = Path(root) / "TABLES.md"
    path.write_text("\n\n".join(parts) + "\n")
    figures.forest_plot(panels, Path(root) / "differences.png")
    return path


def compare(runs_a: list[Path], runs_b: list[Path]) -> list[dict]:
    """Every accuracy the runs share, B minus A, paired over their test images; with several
    runs a side (seeds), the k-th of A (by seed folder, else as given) paired with the k-th
    of B (`paired_difference`)."""
    if len(runs_a) != len(runs_b):
        raise TestSetMismatch(f"{len(runs_a)} runs against {len(runs_b)}: compare pairs "
                              "seed with seed, so give as many on each side")
    cache: dict = {}
    a, b = (seed_group([_record_of(Path(run)) for run in runs], cache)
            for runs in (runs_a, runs_b))
    names = [n for n in a.get("predictions", {}) if n in b.get("predictions", {})]
    if not names:
        raise TestSetMismatch(f"{runs_a[0]} and {runs_b[0]} share no accuracy with a "
                              "predictions file")
    return [paired_difference(b, a, name, cache, by_seed=False) for name in names]


def differs_from_kept(folder: Path) -> list[str]:
    """The predictions files of a run trained again whose image keys, labels or logits
    differ from the kept `<name>.kept.npz` beside them (`run_all.sh` keeps a run's record so
    while it trains the run again for a checkpoint that was not carried over)."""
    kept = sorted(Path(folder).glob("*.kept.npz"))
    if not kept:
        raise FileNotFoundError(f"{folder}: no *.kept.npz (a run trained again keeps its "
                                "old predictions files under that name)")
    differ = []
    for old in kept:
        new = old.with_name(old.name.removesuffix(".kept.npz") + ".npz")
        a = load_predictions(old)
        b = load_predictions(new) if new.is_file() else None
        if b is None or any(not np.array_equal(a[key], b[key]) for key in a):
            differ.append(new.name)
    return differ


def _record_of(folder: Path) -> dict:
    path = folder / "metrics.json"
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no metrics.json (expected a run folder)")
    return {**json.loads(path.read_text()), "_dir": folder.as_posix(), "_path": str(folder)}


def main(argv=None) -> None:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv[:1] == ["compare"]:
        parser = argparse.ArgumentParser(
            prog="python -m shared.results compare",
            description="B minus A on every accuracy both sides report, paired over their "
                        "test images: the difference in points, its paired bootstrap 95% "
                        "interval and McNemar's exact p. Several runs a side (seeds: "
                        "--a A0 A1 A2 --b B0 B1 B2) give the mean difference with an "
                        "interval over seeds and test photos, how many seeds agree in "
                        "sign, and each seed's own difference (seed k of A against seed k "
                        "of B, in the order given).")
        parser.add_argument("run_a", type=Path, nargs="?")
        parser.add_argument("run_b", type=Path, nargs="?")
        parser.add_argument("--a", type=Path, nargs="+", metavar="RUN", help="side A's runs")
        parser.add_argument("--b", type=Path, nargs="+", metavar="RUN", help="side B's runs")
        args = parser.parse_args(argv[1:])
        if bool(args.a) != bool(args.b) or bool(args.a) == bool(args.run_a and args.run_b):
            parser.error("give RUN_A RUN_B, or --a RUN... --b RUN...")
        runs_a, runs_b = (args.a, args.b) if args.a else ([args.run_a], [args.run_b])
        try:
            found = compare(runs_a, runs_b)
        except (TestSetMismatch, OSError, KeyError, ValueError) as e:
            sys.exit(f"error: {e}")
        print(f"B = {' '.join(map(str, runs_b))} minus A = {' '.join(map(str, runs_a))}\n")
        if len(runs_a) == 1:
            print("| accuracy | images | B - A (points) | 95% CI | McNemar p |\n"
                  "|---|---|---|---|---|")
            for row in found:
                low, high = row["ci95"]
                print(f"| {row['name']} | {row['images']} | {row['difference']:+.2f} | "
                      f"{low:+.2f} – {high:+.2f} | {row['mcnemar_p']:.3g} |")
            return
        print("| accuracy | seeds | images | B - A (points) | 95% CI (seeds and photos) | "
              "seeds agreeing | each seed's B - A (McNemar p) |\n|---|---|---|---|---|---|---|")
        for row in found:
            low, high = row["ci95"]
            each = "; ".join(f"{d['difference']:+.2f} (p {d['mcnemar_p']:.3g})"
                             for d in row["per_seed"])
            print(f"| {row['name']} | {row['seeds']} | {row['images']} | "
                  f"{row['difference']:+.2f} | {low:+.2f} – {high:+.2f} | "
                  f"{row['seeds_agreeing']}/{row['seeds']} | {each} |")
        return
    if argv[:1] == ["check-kept"]:
        parser = argparse.ArgumentParser(
            prog="python -m shared.results check-kept",
            description="Exit 0 if a run trained again gave exactly the predictions of its "
                        "kept record (each <name>.kept.npz against <name>.npz), else name the "
                        "files that differ and exit 1.")
        parser.add_argument("run", type=Path)
        run = parser.parse_args(argv[1:]).run
        try:
            differ = differs_from_kept(run)
        except (OSError, KeyError, ValueError) as e:
            sys.exit(f"error: {e}")
        if differ:
            sys.exit(f"{run}: trained again, its predictions differ from the kept record's: "
                     f"{', '.join(differ)}")
        print(f"{run}: trained again, the same predictions as its kept record")
        return
    parser = argparse.ArgumentParser(prog="python -m shared.results", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("root", type=Path, nargs="?", default=Path("results"))
    print(write_tables(parser.parse_args(argv).root))


if __name__ == "__main__":
    main()
