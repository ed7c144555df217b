"""Run records and the tables built from them, worked by hand: seed groups (means, spreads,
gates), every kind of cell, a whole small table, and `compare` as a user calls it. The
intervals' own arithmetic is tested in test_stats.py; here shared/stats.py is the oracle."""

import json
from pathlib import Path

import numpy as np
import pytest

from shared import errors, results, stats


def _record(root, folder, correct, *, gates=None, metrics=None, name="test_top1",
            task="task1_2_finetune", **args):
    """A run folder under `root` with a predictions file (image i right when correct[i];
    10 classes, true class 0) and its metrics.json; returns the record as `load_records`
    reads it."""
    path = root / folder
    path.mkdir(parents=True)
    correct = np.asarray(correct, bool)
    logits = np.where(correct[:, None], np.eye(10)[0], np.eye(10)[1])
    results.save_predictions(path / "test_predictions.npz", [f"img{i}" for i in
                                                             range(len(correct))],
                             np.zeros(len(correct), np.int64), logits)
    record = {"task": task, "variant": folder.rsplit("/", 1)[-1],
              "dataset": "bird", "model": "resnet18", "weights": "none",
              "metrics": {name: float(correct.mean()), **(metrics or {})},
              "ci95": {name: list(stats.wilson_interval(int(correct.sum()), len(correct)))},
              "predictions": {name: "test_predictions.npz"},
              "data": {"train": 8, "val": 2, "test": len(correct)},
              "args": {"recipe": "seed", "epochs": 3, "image_size": 32, **args}}
    if gates is not None:
        record["gates"] = gates
    (path / "metrics.json").write_text(json.dumps(record))
    found = next(r for r in results.load_records(root) if r["_dir"] == folder)
    return found | {"_hits": correct}  # for the tests' own arithmetic; the code reads files


def test_load_records_names_each_folder_relative_to_the_root(tmp_path):
    _record(tmp_path, "b/run", [1, 0])
    _record(tmp_path, "a/run", [1, 1])
    found = results.load_records(tmp_path)
    assert [r["_dir"] for r in found] == ["a/run", "b/run"]  # sorted, posix, relative
    assert found[0]["_path"] == str(tmp_path / "a" / "run")
    assert found[0]["metrics"]["test_top1"] == 1.0


def test_row_keys_and_seeds_read_the_seed_folder_only():
    r = {"_dir": "seed12/task1_2_finetune/bird/seedling"}
    assert results.row_key(r) == "task1_2_finetune/bird/seedling"
    assert results.seed_of(r) == "seed12"
    assert results.seed_of({"_dir": "task1/bird/run"}) == ""
    assert results.row_key({"_dir": "a/seedx/b"}) == "a/seedx/b"  # not seed<digits>


def test_seed_group_means_metrics_and_gates_and_keeps_the_spread(tmp_path):
    """Three seeds right on 6, 8 and 7 of 10 images: mean 0.7, sd 0.1; the gate's value is
    the mean of 1, 2 and 4 and it passes only if every seed passed; a number that is equal
    across seeds stays as it is (an int stays an int), a flag or a text is the first seed's;
    members are ordered by seed number (seed10 after seed2)."""
    hits = {0: [1] * 6 + [0] * 4, 2: [1] * 8 + [0] * 2, 10: [1] * 7 + [0] * 3}
    members = [_record(tmp_path, f"seed{s}/t/bird/run", hits[s],
                       metrics={"best_epoch": 3, "epochs_run": s, "finished": s == 0,
                                "localiser": f"CAM{s}", "robust_top1": {"fgsm": s / 10}},
                       gates=[results.gate("worked", value, 0.5, value > 1.5),
                              results.gate("other", 1.0, 0.5, True)])
               for s, value in ((10, 4.0), (0, 1.0), (2, 2.0))]
    group = results.seed_group(members)
    assert [results.seed_of(r) for r in group["_seeds"]] == ["seed0", "seed2", "seed10"]
    assert group["_dir"] == "t/bird/run"
    m = group["metrics"]
    assert m["test_top1"] == pytest.approx(0.7)
    assert m["best_epoch"] == 3 and isinstance(m["best_epoch"], int)
    assert m["epochs_run"] == pytest.approx(4.0)  # (0 + 2 + 10) / 3
    assert m["finished"] is True and m["localiser"] == "CAM0"
    assert m["robust_top1"] == {"fgsm": pytest.approx(0.4)}
    assert group["spread"]["test_top1"] == pytest.approx(0.1)
    matrix = np.array([hits[s] for s in (0, 2, 10)], float)
    _, low, high = stats.two_level_bootstrap(matrix)
    assert group["ci95"]["test_top1"] == [low, high]
    worked, other = group["gates"]
    assert worked["value"] == pytest.approx(7 / 3) and worked["passed"] is False
    assert other["value"] == 1.0 and other["passed"] is True
    assert worked["name"] == "worked" and worked["threshold"] == 0.5
    assert worked["seeds_passed"] == [2, 3] and other["seeds_passed"] == [3, 3]
    # the mean (2.33) is above the threshold, yet one seed failed: the cell says so
    assert results._gates_cell(group) == ("worked: mean 2.33 (threshold 0.5) FAIL, "
                                          "2/3 seeds pass; other: mean 1 (threshold 0.5) "
                                          "pass, 3/3 seeds pass")


def test_two_seeds_show_both_values_and_an_unmeasured_gate_stays_unmeasured(tmp_path):
    a = _record(tmp_path, "seed0/t/run", [1, 1, 0, 0],
                gates=[results.gate("g", None, 0, False)])
    b = _record(tmp_path, "seed1/t/run", [1, 1, 1, 0], gates=[results.gate("g", 2.0, 0, True)])
    group = results.seed_group([b, a])
    assert group["spread"]["test_top1"] == [0.5, 0.75]
    assert group["gates"][0]["value"] is None and group["gates"][0]["passed"] is False
    assert results.seeds_cell(group) == "2 seeds"
    cell = results.with_interval("test_top1")(group)
    low, high = group["ci95"]["test_top1"]
    assert cell == f"62.5 ({100 * low:.1f}–{100 * high:.1f}; seeds 50.0, 75.0)"
    c = _record(tmp_path, "seed2/t/run", [1, 0, 0, 0])  # a seed without the gate
    assert [(g["value"], g["passed"], g["seeds_passed"])
            for g in results.seed_group([b, c])["gates"]] == [(None, False, [1, 2])]
    d = _record(tmp_path, "seed3/t/run", [1, 0, 0, 0], gates=[results.gate("g", 4.0, 0, True)])
    assert [(g["value"], g["passed"]) for g in results.seed_group([b, d])["gates"]] == [
        (3.0, True)]
    f = _record(tmp_path, "seed6/t/run", [1, 0, 0, 0], gates=[results.gate("g", 1.0, 4, False)])
    assert [(g["value"], g["threshold"]) for g in results.seed_group([b, f])["gates"]] == [
        (1.5, 2.0)]  # each seed's own threshold (a baseline's FID): their mean
    e = _record(tmp_path, "seed4/t/run", [1, 0, 0, 0], gates=[results.gate("h", 1.0, 0, True),
                                                               results.gate("g", 1.0, 0, True)])
    assert [(g["name"], g["value"]) for g in results.seed_group([b, e])["gates"]] == [
        ("g", 1.5), ("h", None)]  # matched by name, not by position
    assert "gates" not in results.seed_group([c, _record(tmp_path, "seed5/t/run", [1, 0, 0, 1])])


def test_a_row_over_seeds_names_the_file_each_seed_read(tmp_path):
    """A row over seeds whose runs each read their own seed's model shows the path once,
    its seed folder as seed{0,2}; a value the seeds share stays; others are each listed."""
    runs = [_record(tmp_path, f"seed{s}/task3_crop/bird/cam", [1, 0]) for s in (2, 0)]

    def weights(*values):
        for run, value in zip(runs, values, strict=True):
            run["weights"] = value
        return results.seed_group(runs)["weights"]

    assert weights("results/seed2/t/bird/strong/best.pt", "results/seed0/t/bird/strong/best.pt"
                   ) == "results/seed{0,2}/t/bird/strong/best.pt"
    assert weights("imagenet", "imagenet") == "imagenet"
    assert weights("seed2/a.pt", "seed0/b.pt") == "seed0/b.pt; seed2/a.pt"
    assert weights("x/myseed2/a.pt", "x/myseed0/a.pt") == "x/myseed0/a.pt; x/myseed2/a.pt"


def test_one_run_is_its_own_group_with_its_wilson_interval(tmp_path):
    run = _record(tmp_path, "t/run", [1, 1, 1, 0])
    group = results.seed_group([run])
    assert group["_seeds"] == [run] and group["ci95"] == run["ci95"]
    assert "spread" not in group and results.seeds_cell(group) == "1 seed"
    low, high = stats.wilson_interval(3, 4)
    assert results.with_interval("test_top1")(group) == (
        f"75.0 ({100 * low:.1f}–{100 * high:.1f})")


def test_seed_groups_gather_rows_in_order_and_refuse_different_images(tmp_path):
    _record(tmp_path, "seed0/t/b", [1, 0])
    _record(tmp_path, "seed0/t/a", [1, 1])
    _record(tmp_path, "seed1/t/a", [0, 1])
    groups = results.seed_groups(results.load_records(tmp_path))
    # one run stays as it is: its own folder, for the links to its figures
    assert [(g["_dir"], len(g["_seeds"])) for g in groups] == [("t/a", 2), ("seed0/t/b", 1)]
    _record(tmp_path, "seed1/t/b", [1, 0, 1])  # three test images against two
    with pytest.raises(errors.TestSetMismatch, match=r"seed1/t/b and seed0/t/b were tested "
                                                     r"on different images \(3 and 2\): "
                                                     r"test_top1 cannot be compared"):
        results.seed_groups(results.load_records(tmp_path))


def test_cells_by_hand():
    r = {"metrics": {"test_top1": 0.898, "ece": 0.1394, "robust_top1": {"pgd@1/255": 0.25},
                     "missing": None},
         "ci95": {"test_top1": [0.882, 0.912], "ece": [0.128, 0.150]},
         "spread": {"ece": 0.0123},
         "data": {"train": 2610, "val": 293, "test": 1500}}
    assert results.with_interval("test_top1")(r) == "89.8 (88.2–91.2)"
    assert results.with_interval("ece", scale=1, digits=3, bare=results.fixed)(r) == (
        "0.139 (0.128–0.150; sd 0.012)")
    assert results.with_interval("robust_top1:pgd@1/255")(r) == "25.00"  # no interval: bare
    assert results.with_interval("missing")(r) == "–"
    assert results.with_interval("test_top1")({"metrics": {"test_top1": 0.5}}) == "50.00"
    assert results.metric(r, "robust_top1:pgd@1/255") == 0.25
    assert results.metric(r, "test_top1:anything") == 0.898  # not nested: the value itself
    assert results.pct(0.12345) == "12.35" and results.pct(None) == "–"
    assert results.fixed(0.12345) == "0.123" and results.fixed(None) == "–"
    assert results.split_counts(r) == "2610 / 293 / 1500"


def test_difference_and_gate_cells_by_hand():
    one = {"difference": 3.04, "ci95": [0.96, 5.14], "seeds": 1, "mcnemar_p": 0.00123,
           "seeds_agreeing": 1}
    assert results._difference_cell(one) == "+3.0 (+1.0–+5.1), p 0.0012"
    three = one | {"difference": -0.55, "ci95": [-2.0, 0.91], "seeds": 3, "seeds_agreeing": 2}
    assert results._difference_cell(three) == "-0.6 (-2.0–+0.9), 2/3 seeds agree"
    assert results._difference_cell(None) == "–"
    r = {"gates": [results.gate("GAN-test / chance", 11.3456, 10, True),
                   results.gate("FID below", None, 0.5, True)]}
    assert results._gates_cell(r) == ("GAN-test / chance: 11.3 (threshold 10) pass; "
                                      "FID below: not measured (threshold 0.5) FAIL")
    assert results._gates_cell({}) == "–"


def test_gates_judge_only_the_metrics_they_name():
    clean = results.gate("clean", 1.0, 0, False, judges=["test_top1"])
    everything = results.gate("all", 1.0, 0, False)
    passed = results.gate("fine", 1.0, 0, True)
    assert clean == {"name": "clean", "value": 1.0, "threshold": 0, "passed": False,
                     "judges": ["test_top1"]}
    assert "judges" not in everything and passed["passed"] is True
    r = {"gates": [clean, everything, passed]}
    assert results.failed_gates(r) == [clean, everything]
    assert results.failed_gates(r, "robust_top1") == [everything]
    assert results.failed_gates(r, "test_top1") == [clean, everything]
    assert results.failed_gates({}) == []
    assert results.gate("truthy", 1.0, 0, 1)["passed"] is True  # a bool, for JSON


def test_merge_keeps_later_values_and_every_gate_in_order():
    a = {"metrics": {"x": 1, "y": 2}, "ci95": {"x": [0, 1]}, "gates": [{"name": "a"}]}
    b = {"metrics": {"y": 3}, "predictions": {"y": "f.npz"}, "gates": [{"name": "b"}]}
    assert results.merge(a, b, {"other": 1}) == {
        "metrics": {"x": 1, "y": 3}, "ci95": {"x": [0, 1]}, "predictions": {"y": "f.npz"},
        "gates": [{"name": "a"}, {"name": "b"}]}
    assert results.merge({"metrics": {"x": 1}}) == {"metrics": {"x": 1}, "ci95": {},
                                                    "predictions": {}}


def test_predictions_files_hold_float16_logits_and_score_top_k(tmp_path):
    logits = np.array([[0.1, 0.3, 0.2], [0.5, 0.4, 0.3], [0.2, 0.3, 0.1]], np.float64)
    labels = np.array([2, 0, 2], np.int32)  # wrong, right, third of three
    scores = results.score_predictions(tmp_path, "p.npz", ["a", "b", "c"], labels, logits,
                                       {"top1": 1, "top2": 2})
    saved = results.load_predictions(tmp_path / "p.npz")
    assert saved["logits"].dtype == np.float16 and saved["label"].dtype == np.int64
    assert saved["index"].tolist() == ["a", "b", "c"] and saved["label"].tolist() == [2, 0, 2]
    assert np.array_equal(saved["logits"], scores["logits"])
    assert results.hits(saved["logits"], saved["label"]).tolist() == [False, True, False]
    assert scores["metrics"] == {"top1": pytest.approx(1 / 3), "top2": pytest.approx(2 / 3)}
    assert scores["ci95"]["top2"] == list(stats.wilson_interval(2, 3))
    assert scores["predictions"] == {"top1": "p.npz", "top2": "p.npz"}
    assert not list(tmp_path.glob("*.tmp*"))  # written whole, then renamed
    results.score_predictions(tmp_path, "q.npz", ["a"], [0], logits[:1], {"top1": 1},
                              write=False)
    assert not (tmp_path / "q.npz").exists()
    np.savez(tmp_path / "pickled.npz", index=np.array([object()], dtype=object),
             label=np.zeros(1), logits=np.zeros((1, 1)))
    with pytest.raises(ValueError, match="pickle"):
        results.load_predictions(tmp_path / "pickled.npz")
    assert results.scored("x", np.array([], bool), "f")["metrics"] == {"x": 0.0}


def test_paired_difference_reads_top5_and_pairs_seed_with_seed(tmp_path):
    """B against A on 200 images: the difference in points, the documented paired bootstrap
    (2,000 resamples, seed 0) and McNemar's p; top-5 counts an image right when fewer than 5
    classes score above its own (all of these); several seeds pair seed with seed, with no
    single McNemar p."""
    rng = np.random.default_rng(7)
    hits_a, hits_b = rng.random(200) < 0.5, rng.random(200) < 0.7
    a, b = _record(tmp_path, "a", hits_a), _record(tmp_path, "b", hits_b)
    found = results.paired_difference(b, a, "test_top1")
    assert found["difference"] == pytest.approx(100 * (hits_b.mean() - hits_a.mean()))
    assert found["mcnemar_p"] == stats.mcnemar_p(hits_a, hits_b)
    assert (found["images"], found["seeds"], found["seeds_agreeing"]) == (200, 1, 1)
    _, low, high = stats.paired_bootstrap(hits_a, hits_b, 2000, 0)
    assert found["ci95"] == [pytest.approx(100 * low), pytest.approx(100 * high)]
    assert found["per_seed"] == [{"difference": pytest.approx(found["difference"]),
                                  "mcnemar_p": found["mcnemar_p"]}]
    for r in (a, b):
        r["predictions"]["test_top5"] = "test_predictions.npz"
    assert results.paired_difference(b, a, "test_top5")["difference"] == 0.0
    assert results.paired_difference(b, {**a, "predictions": {}}, "test_top1") is None

    seeds = {side: [_record(tmp_path, f"seed{s}/{side}", rng.random(200) < p)
                    for s in range(3)] for side, p in (("a", 0.5), ("b", 0.6))}
    pooled = results.paired_difference(results.seed_group(seeds["b"]),
                                       results.seed_group(seeds["a"]), "test_top1")
    diffs = np.stack([np.array(b_["_hits"], float) - a_["_hits"]
                      for a_, b_ in zip(seeds["a"], seeds["b"], strict=True)])
    mean, low, high = stats.two_level_bootstrap(diffs, 2000, 0)
    assert pooled["difference"] == pytest.approx(100 * mean)
    assert pooled["ci95"] == [pytest.approx(100 * low), pytest.approx(100 * high)]
    assert pooled["mcnemar_p"] is None and pooled["seeds"] == 3
    assert [d["difference"] for d in pooled["per_seed"]] == pytest.approx(
        list(100 * diffs.mean(axis=1)))
    group = results.seed_group(seeds["a"][:2])
    with pytest.raises(errors.TestSetMismatch, match="a has 2 seeds and a 1"):
        results.paired_difference(group, a, "test_top1")
    other = _record(tmp_path, "fewer", hits_b[:100])
    with pytest.raises(errors.TestSetMismatch, match="test_top1 cannot be compared"):
        results.paired_difference(other, a, "test_top1")


def test_a_part_done_study_pairs_the_seeds_both_rows_have_and_says_which_it_left_out(
        tmp_path):
    """Seed folders pair by seed, not by position: seeds 0 and 2 of B against seeds 0-2 of A
    are seed 0 and 2's difference, seed 1 named as left out; no shared seed is an error."""
    rng = np.random.default_rng(3)
    a = [_record(tmp_path, f"seed{s}/a", rng.random(100) < 0.5) for s in range(3)]
    b = [_record(tmp_path, f"seed{s}/b", rng.random(100) < 0.7) for s in (2, 0)]
    found = results.paired_difference(results.seed_group(b), results.seed_group(a),
                                      "test_top1")
    both = results.paired_difference(results.seed_group(b), results.seed_group([a[0], a[2]]),
                                     "test_top1")
    assert found == {**both, "unpaired": ["seed1"]} and both["unpaired"] == []
    assert found["seeds"] == 2
    assert found["per_seed"][1]["difference"] == pytest.approx(
        100 * (b[0]["_hits"].mean() - a[2]["_hits"].mean()))  # seed 2 with seed 2
    assert results._difference_cell(found).endswith(
        " seeds agree (seeds both rows have; not seed1)")
    one = results.paired_difference(b[1], results.seed_group(a[:2]), "test_top1")
    assert one["seeds"] == 1 and one["unpaired"] == ["seed1"]
    assert one["difference"] == results.paired_difference(b[1], a[0], "test_top1")["difference"]
    with pytest.raises(errors.TestSetMismatch, match="b and seed1/a share no seed "
                       r"\(seed0, seed2 against seed1\): test_top1 is compared"):
        results.paired_difference(results.seed_group(b), a[1], "test_top1")


def test_trained_alike_reads_recipe_size_and_epochs():
    r = {"dataset": "bird", "model": "m", "args": {"image_size": 32, "epochs": 3}}
    seed = {**r, "args": {**r["args"], "recipe": "seed"}}
    assert results.trained_alike(r, seed) and results.trained_alike(seed, r)  # seed: default
    for key, value in (("recipe", "strong"), ("image_size", 64), ("epochs", 4)):
        assert not results.trained_alike(r, {**r, "args": {**r["args"], key: value}})
    assert not results.trained_alike(r, {**r, "model": "other"})
    assert not results.trained_alike(r, {**r, "dataset": "dog"})


def test_tables_are_ordered_by_number_then_letter():
    titles = ["Table 10: x", "Table 2b: y", "Notes", "Table 2: z"]
    tables = [results.Table(t, rows=bool, order=str, columns=[]) for t in titles]
    assert [t.title for t in sorted(tables, key=lambda t: t.number)] == [
        "Table 2: z", "Table 2b: y", "Table 10: x", "Notes"]
    assert results.Table("Notes", bool, str, []).number == (10**6, "Notes")
    declared = [t.number for t in results.declared_tables()]
    assert declared == sorted(declared) and declared[0] == (1, "")


def _table(**kw):
    return results.Table("Table 9: by hand", rows=lambda r: r["task"] == "task1_2_finetune",
                         order=lambda r: r["variant"],
                         columns=[("Variant", lambda r: r["variant"])], **kw)


def test_a_whole_table_by_hand(tmp_path):
    """Two runs, the second compared with the first: the header, the Seeds column, the gates
    column (a row without gates shows –), the paired difference, the links to the figures
    that exist, the forest plot's panel named by the table's number."""
    a = _record(tmp_path, "runs/a", [1, 0, 0, 0])
    b = _record(tmp_path, "runs/b", [1, 1, 1, 0], gates=[results.gate("g", 2.5, 1, True)])
    (tmp_path / "runs" / "b" / "confusions.png").write_bytes(b"png")
    (tmp_path / "runs" / "b" / "confusion_matrix.png").write_bytes(b"png")
    (tmp_path / "runs" / "b" / "per_class.csv").write_text("class\n")
    panels = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(results.figures, "forest_plot", lambda p, path: panels.append((p, path)))
    try:
        path = results.write_tables(tmp_path, [_table(
            reference=lambda r, rows: None if r["variant"] == "a" else rows[0],
            compared=[("top-1", "test_top1")], reference_name="a", confusions=True),
            results.Table("Table 10: empty", rows=lambda r: False, order=str, columns=[])])
    finally:
        monkey.undo()
    found = results.paired_difference(b, a, "test_top1")
    low, high = found["ci95"]
    expected = "\n".join([
        "## Table 9: by hand", "",
        "| Variant | Seeds | Gate: did the method work? (validation) | Δ top-1 vs a (points, "
        "95% CI; McNemar p) | Confusions |",
        "|---|---|---|---|---|",
        "| a | 1 seed | – | – | – |",
        f"| b | 1 seed | g: 2.5 (threshold 1) pass | +50.0 ({low:+.1f}–{high:+.1f}), "
        f"p {found['mcnemar_p']:.2g} | [pairs](runs/b/confusions.png), "
        "[matrix](runs/b/confusion_matrix.png), [per class](runs/b/per_class.csv) |", "",
        "## Table 10: empty", "", "No runs yet.", ""])
    text = path.read_text()
    assert path == tmp_path / "TABLES.md" and text.startswith(
        f"# Results\n\nBuilt from the `metrics.json` files under `{tmp_path}` by `python -m "
        "shared.results`. Test accuracy is measured once, with the best-on-validation weights "
        "and deterministic transforms. Intervals are 95% Wilson score intervals; a difference "
        "from a reference row is paired over the same test images (bootstrap over images, "
        "2,000 resamples, seeded) with the exact McNemar p-value. A row over several seeds "
        "shows the mean over them, an interval over seeds and test photos (a two-level "
        "bootstrap) and the spread over seeds; its differences pair seed with seed and say how "
        "many agree in sign. Every comparison is plotted in [differences.png](differences.png)."
        "\n\n## Table 9")
    assert text.endswith(expected)
    (table_panels, plot_path), = panels
    assert plot_path == tmp_path / "differences.png"
    assert [(title, [(row, label) for row, label, _ in rows])
            for title, rows in table_panels] == [("Table 9", [("runs/b", "top-1")])]


def test_a_failed_gate_or_several_seeds_change_the_difference_column(tmp_path):
    for s in range(2):
        _record(tmp_path, f"seed{s}/a", [1, 0, 0, 0])
        _record(tmp_path, f"seed{s}/b", [1, 1, 1 - s, 0],
                gates=[results.gate("g", 0.0, 1, False, judges=["other"])])
    results.write_tables(tmp_path, [_table(
        reference=lambda r, rows: None if r["variant"] == "a" else rows[0],
        compared=lambda rows: [("top-1", "test_top1")], reference_name="a")])
    lines = (tmp_path / "TABLES.md").read_text().splitlines()
    assert "| Variant | Seeds | Gate: did the method work? (validation) | Δ top-1 vs a " \
           "(points, 95% CI; McNemar p, or seeds agreeing) |" in lines
    row = next(line for line in lines if line.startswith("| b |"))
    # the gate judges another metric: the difference stands
    assert "| 2 seeds | g: mean 0 (threshold 1) FAIL, 0/2 seeds pass | +37.5 (" in row
    assert row.endswith(", 2/2 seeds agree |")
    for s in range(2):
        record = json.loads((tmp_path / f"seed{s}/b/metrics.json").read_text())
        record["gates"][0].pop("judges")
        (tmp_path / f"seed{s}/b/metrics.json").write_text(json.dumps(record))
    results.write_tables(tmp_path, [_table(
        reference=lambda r, rows: None if r["variant"] == "a" else rows[0],
        compared=[("top-1", "test_top1")], reference_name="a")])
    row = next(line for line in (tmp_path / "TABLES.md").read_text().splitlines()
               if line.startswith("| b |"))
    assert row.endswith("| did not work at this budget |")


def test_compare_prints_one_pair_and_seed_groups(tmp_path, capsys):
    a = _record(tmp_path, "a", [1, 0, 0, 0]).get("_path")
    b = _record(tmp_path, "b", [1, 1, 1, 0]).get("_path")
    results.main(["compare", a, b])
    found = results.compare([tmp_path / "a"], [tmp_path / "b"])[0]
    low, high = found["ci95"]
    assert capsys.readouterr().out.splitlines() == [
        f"B = {b} minus A = {a}", "",
        "| accuracy | images | B - A (points) | 95% CI | McNemar p |", "|---|---|---|---|---|",
        f"| test_top1 | 4 | +50.00 | {low:+.2f} – {high:+.2f} | {found['mcnemar_p']:.3g} |"]
    sides = {side: [_record(tmp_path, f"seed{s}/{side}", hits).get("_path")
                    for s, hits in enumerate(rows)]
             for side, rows in (("a", ([1, 0, 0, 0], [0, 0, 0, 0])),
                                ("b", ([1, 1, 0, 0], [0, 0, 0, 0])))}
    results.main(["compare", "--a", *sides["a"], "--b", *sides["b"]])
    lines = capsys.readouterr().out.splitlines()
    assert lines[2] == ("| accuracy | seeds | images | B - A (points) | 95% CI (seeds and "
                        "photos) | seeds agreeing | each seed's B - A (McNemar p) |")
    assert lines[4].startswith("| test_top1 | 2 | 4 | +12.50 | ")
    assert lines[4].endswith(" | 1/2 | +25.00 (p 1); +0.00 (p 1) |")


def test_compare_refuses_what_it_cannot_pair_and_says_why(tmp_path, capsys):
    a = _record(tmp_path, "a", [1, 0]).get("_path")
    b = _record(tmp_path, "b", [1, 1], name="other_top1").get("_path")
    with pytest.raises(SystemExit, match="share no accuracy with a predictions file"):
        results.main(["compare", a, b])
    with pytest.raises(SystemExit, match=r"empty: no metrics.json \(expected a run folder\)"):
        results.main(["compare", a, str(tmp_path / "empty")])
    with pytest.raises(errors.TestSetMismatch, match="2 runs against 1: compare pairs seed"):
        results.compare([tmp_path / "a", tmp_path / "a"], [tmp_path / "b"])
    for wrong in (["compare", a], ["compare", a, b, "--a", a, "--b", b], ["compare", "--a", a]):
        with pytest.raises(SystemExit) as exit_:
            results.main(wrong)
        assert exit_.value.code == 2
        assert capsys.readouterr().err.endswith(
            "compare: error: give RUN_A RUN_B, or --a RUN... --b RUN...\n")


def test_run_records_keep_flags_as_json_and_the_fit_beside_them(tmp_path):
    import torch

    rt = type("Runtime", (), {"device": torch.device("cpu"), "world_size": 1,
                              "amp_dtype": torch.bfloat16})()
    flags = {"dataset": "bird", "model": "resnet18", "weights": "imagenet",
             "out": tmp_path / "run", "epochs": 2}
    fit = {"metrics": {"test_top1": 0.5}, "ci95": {"test_top1": [0.4, 0.6]},
           "predictions": {"test_top1": "p.npz"}, "history": [{"epoch": 1}],
           "timing": {"train_seconds": 3.0}, "channels_last": True}
    record = results.make_record("task1_2_finetune", "pretrained", flags, rt,
                                 {"test": 4}, fit, extra=1.5)
    assert record["metrics"] == {"test_top1": 0.5, "extra": 1.5}
    assert list(record) == ["task", "variant", "dataset", "model", "weights", "metrics", "data",
                            "env", "ci95", "predictions", "history", "timing", "args"]
    assert (record["task"], record["variant"], record["dataset"], record["model"]) == (
        "task1_2_finetune", "pretrained", "bird", "resnet18")
    assert (record["data"], record["ci95"], record["predictions"]) == (
        {"test": 4}, fit["ci95"], fit["predictions"])
    assert record["args"]["epochs"] == 2 and record["args"]["dataset"] == "bird"
    assert record["args"]["out"] == str(tmp_path / "run") and record["weights"] == "imagenet"
    assert record["env"]["amp"] == "bfloat16" and record["env"]["channels_last"] is True
    assert record["env"]["device"] == f"cpu: {results.cpu_name()}"
    assert record["env"]["threads"] == torch.get_num_threads()
    assert (record["history"], record["timing"]) == (fit["history"], fit["timing"])
    assert "gates" not in record
    gated = results.make_record("t", "v", flags, rt, {}, fit | {"gates": [{"name": "g"}]})
    assert gated["gates"] == [{"name": "g"}]
    json.dumps(record)  # every value JSON can hold
    other = results.task_record("t", "v", flags, rt, {}, {}, model="vit", weights="a.pt")
    assert (other["model"], other["weights"]) == ("vit", "a.pt")
    results.write_json({"a": [1]}, tmp_path / "m.json")
    assert (tmp_path / "m.json").read_text() == '{\n  "a": [\n    1\n  ]\n}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["m.json"]  # no temporary file left


def test_the_tables_command_and_its_help(tmp_path, capsys, monkeypatch):
    """`python -m shared.results [ROOT]` (default results/) prints the TABLES.md it wrote;
    each command's --help names it and its arguments; the module docstring keeps its lines."""
    _record(tmp_path / "results", "runs/a", [1, 0], task="no table's")
    monkeypatch.chdir(tmp_path)
    results.main([])
    assert capsys.readouterr().out == f"{Path('results') / 'TABLES.md'}\n"
    assert (tmp_path / "results" / "TABLES.md").is_file()
    monkeypatch.setattr("sys.argv", ["results.py", str(tmp_path / "results")])
    results.main()
    assert capsys.readouterr().out == f"{tmp_path / 'results' / 'TABLES.md'}\n"
    with pytest.raises(SystemExit):
        results.main(["--help"])
    shown = capsys.readouterr().out
    assert shown.startswith("usage: python -m shared.results [-h] [root]\n")
    assert "\n    python -m shared.results compare RUN_A RUN_B      # B - A" in shown
    with pytest.raises(SystemExit):
        results.main(["compare", "--help"])
    shown = " ".join(capsys.readouterr().out.split())
    assert shown.startswith("usage: python -m shared.results compare [-h] [--a RUN [RUN ...]] "
                            "[--b RUN [RUN ...]] [run_a] [run_b] B minus A on every accuracy "
                            "both sides report, paired over their test images: the "
                            "difference in points, its paired bootstrap 95% interval and "
                            "McNemar's exact p. Several runs a side (seeds: --a A0 A1 A2 --b "
                            "B0 B1 B2) give the mean difference with an interval over seeds "
                            "and test photos, how many seeds agree in sign, and each seed's "
                            "own difference (seed k of A against seed k of B, in the order "
                            "given).")
    assert "--a RUN [RUN ...] side A's runs --b RUN [RUN ...] side B's runs" in shown


def test_compare_from_the_command_line_and_runs_without_predictions(tmp_path, capsys,
                                                                    monkeypatch):
    a, b = (_record(tmp_path, name, [1, 0, 1, 0])["_path"] for name in ("a", "b"))
    monkeypatch.setattr("sys.argv", ["results.py", "compare", "--a", a, "--b", b])
    results.main()
    assert capsys.readouterr().out.startswith(f"B = {b} minus A = {a}\n\n| accuracy | images |")
    c, d = (_record(tmp_path, f"{name}-many", [1, 0, 1, 0])["_path"] for name in ("c", "d"))
    results.main(["compare", "--a", a, c, "--b", b, d])
    assert capsys.readouterr().out.startswith(f"B = {b} {d} minus A = {a} {c}\n")
    for side in ("a", "b"):  # an older run without predictions files: nothing to pair
        kept = (tmp_path / side / "metrics.json").read_text()
        record = json.loads(kept)
        del record["predictions"]
        (tmp_path / side / "metrics.json").write_text(json.dumps(record))
        with pytest.raises(errors.TestSetMismatch, match="share no accuracy"):
            results.compare([tmp_path / "a"], [tmp_path / "b"])
        (tmp_path / side / "metrics.json").write_text(kept)


def test_git_commit_names_the_checkout_and_none_outside_git(tmp_path, monkeypatch):
    import re
    import subprocess

    here = Path(results.__file__).parent
    inside = subprocess.run(["git", "rev-parse", "--short=7", "HEAD"], cwd=here,
                            capture_output=True, text=True)
    commit = results.git_commit()
    if inside.returncode == 0:  # a clone: the commit, -dirty when tracked files differ
        # `git describe`: the hash, or tag-N-g<hash> once there are tags
        assert re.fullmatch(r"(.+-g)?[0-9a-f]{7,}(-dirty)?", commit), commit
        assert inside.stdout.strip() in commit
        changed = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                                 cwd=here, capture_output=True, text=True).stdout
        assert commit.endswith("-dirty") == bool(changed.strip())
    else:
        assert commit is None
    monkeypatch.setattr(results, "__file__", str(tmp_path / "shared" / "results.py"))
    (tmp_path / "shared").mkdir()
    assert results.git_commit() is None  # a copy outside any git checkout


def test_cpu_name_reads_the_model_line_and_falls_back_to_the_platform(monkeypatch):
    import io
    import platform

    def cpuinfo(path, *args, **kwargs):
        assert path == "/proc/cpuinfo"
        return io.StringIO("processor\t: 0\nvendor_id\t: AuthenticAMD\n"
                           "model name\t: AMD EPYC 9B14: 96-Core\nflags\t: fpu\n")

    monkeypatch.setattr(results, "open", cpuinfo, raising=False)
    assert results.cpu_name() == "AMD EPYC 9B14: 96-Core"  # a colon in the name kept

    def unreadable(path, *args, **kwargs):
        raise OSError("no /proc here")

    monkeypatch.setattr(results, "open", unreadable, raising=False)
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "arm64")
    assert results.cpu_name() == "arm64"
    monkeypatch.setattr(platform, "processor", lambda: "arm")
    assert results.cpu_name() == "arm"


def test_environment_names_the_gpu_and_the_precision(monkeypatch):
    import torch

    rt = type("Runtime", (), {"device": torch.device("cuda", 1), "world_size": 4,
                              "amp_dtype": None})()
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device: f"H100 #{device.index}")
    env = results.environment(rt)
    assert env == {"torch": torch.__version__, "device": "cuda: H100 #1", "world_size": 4,
                   "threads": torch.get_num_threads(), "amp": "off", "git": results.STARTED_AT}


def test_seed_groups_pool_only_what_every_seed_backs_with_a_file(tmp_path):
    """An interval and a spread for each accuracy every seed has a predictions file for, in
    order (a first one a seed lacks does not stop the next); a metric without a file keeps
    no interval (seed 0's Wilson interval would not be the mean's); runs without any
    predictions pool their metrics."""
    members = []
    for s, hits in enumerate(([1, 0, 1, 0], [1, 1, 1, 0])):
        record = _record(tmp_path, f"seed{s}/run", hits, metrics={"ece": 0.1 * (s + 1)})
        record["predictions"] = {"test_top5": "test_predictions.npz"} | (
            {} if s else {"test_top1_tta": "test_predictions.npz"}) | record["predictions"]
        record["ci95"]["ece"] = [0.0, 0.5]
        members.append(record)
    group = results.seed_group(members)
    assert sorted(group["ci95"]) == ["test_top1", "test_top5"]
    assert sorted(group["spread"]) == ["test_top1", "test_top5"]
    assert group["metrics"]["ece"] == pytest.approx(0.15)
    bare = [{k: v for k, v in r.items() if k not in ("predictions", "ci95")} for r in members]
    group = results.seed_group(bare)
    assert group["metrics"]["test_top1"] == pytest.approx(0.625) and group["ci95"] == {}


def test_a_number_without_per_image_values_shows_its_spread_over_seeds(tmp_path):
    """A FID has no per-image values: over seeds its cell is the mean and the seeds' sd (both
    values for 2 seeds); a number equal on every seed, a flag or one run shows no spread."""
    fids = {0: 150.0, 1: 160.0, 2: 158.0}
    members = [_record(tmp_path, f"seed{s}/t/bird/gan", [1, 0], metrics={
        "fid": fid, "gan_size": 32, "finished": True}) for s, fid in fids.items()]
    group = results.seed_group(members)
    cell = results.with_spread("fid")
    assert cell(group) == f"156.0 (sd {np.std(list(fids.values()), ddof=1):.1f})"
    assert results.with_spread("gan_size")(group) == "32.0"  # no spread: equal on every seed
    assert results.with_spread("finished")(group) == "–"  # not a number
    assert cell(results.seed_group(members[:2])) == "155.0 (seeds 150.0, 160.0)"
    assert cell(members[0]) == "150.0" and results.with_spread("kid")(group) == "–"
    assert results.with_spread("gen", 100, 2)({"metrics": {"gen": 0.10125}}) == "10.12"
    assert results.mean_and_spread([0.1, None]) == "–"  # a seed without it


def test_a_mean_over_images_pools_its_per_image_values_over_seeds(tmp_path):
    """A metric that is a mean over images (a heatmap's deletion AUC) and names its
    per-image file gets the two-level interval and the spread from those values; seeds
    scored on different images are refused."""
    values = {0: [0.1, 0.3, 0.2, 0.4], 1: [0.2, 0.5, 0.3, 0.6], 2: [0.1, 0.2, 0.2, 0.3]}
    members = []
    for s, auc in values.items():
        record = _record(tmp_path, f"seed{s}/t/bird/gradcam", [1, 0, 1, 0],
                         metrics={"deletion_auc": float(np.mean(auc))})
        results.save_per_image(tmp_path / f"seed{s}/t/bird/gradcam/per_image.npz",
                               [f"img{i}" for i in range(4)], {"deletion_auc": auc})
        members.append(record | {"per_image": {"deletion_auc": "per_image.npz"}})
    group = results.seed_group(members)
    matrix = np.array(list(values.values()))
    _, low, high = stats.two_level_bootstrap(matrix)
    assert group["ci95"]["deletion_auc"] == [low, high]
    assert group["spread"]["deletion_auc"] == pytest.approx(matrix.mean(axis=1).std(ddof=1))
    assert group["metrics"]["deletion_auc"] == pytest.approx(matrix.mean())
    results.save_per_image(tmp_path / "seed2/t/bird/gradcam/per_image.npz",
                           [f"other{i}" for i in range(4)], {"deletion_auc": values[2]})
    with pytest.raises(errors.TestSetMismatch, match="deletion_auc cannot be compared"):
        results.seed_group(members, cache={})


def test_seeds_with_as_many_but_different_test_images_are_refused(tmp_path):
    a = _record(tmp_path, "seed0/run", [1, 0, 1])
    b = _record(tmp_path, "seed1/run", [1, 0, 1])
    c = _record(tmp_path, "seed2/run", [1, 0, 1])
    data = results.load_predictions(tmp_path / "seed2/run/test_predictions.npz")
    data["index"] = np.array(["img0", "img1", "other"])
    np.savez(tmp_path / "seed2/run/test_predictions.npz", **data)
    with pytest.raises(errors.TestSetMismatch, match="seed2/run and seed0/run"):
        results.seed_group([a, b, c])
    with pytest.raises(errors.TestSetMismatch, match="seed2/run and seed0/run"):
        results.paired_difference(c, a, "test_top1")


def test_first_is_the_first_row_that_passes_or_none():
    rows = [{"n": 1}, {"n": 2}, {"n": 3}]
    assert results.first(rows, lambda r: r["n"] > 1) is rows[1]
    assert results.first(rows, lambda r: r["n"] > 3) is None


def test_top5_counts_five_classes_above_as_a_miss_and_reads_nested_names(tmp_path):
    """Image 0: its class has 5 classes above it (a top-5 miss, a top-6 hit); image 1: 4
    above (a top-5 hit). B is right on both: +50 points of top-5, also for a nested name."""
    logits = np.zeros((2, 10))
    logits[0, 1:6], logits[1, 1:5] = 1, 1
    for side, rows in (("a", logits), ("b", np.eye(10)[[0, 0]])):
        _record(tmp_path, side, [1, 1])
        results.save_predictions(tmp_path / side / "test_predictions.npz", ["img0", "img1"],
                                 [0, 0], rows)
    a, b = (r | {"predictions": {"test_top5": "test_predictions.npz",
                                 "robust_top5:pgd": "test_predictions.npz"}}
            for r in results.load_records(tmp_path))
    assert results.paired_difference(b, a, "test_top5")["difference"] == 50.0
    assert results.paired_difference(b, a, "robust_top5:pgd")["difference"] == 50.0
    no_files = {k: v for k, v in a.items() if k != "predictions"}
    assert results.paired_difference(b, no_files, "test_top5") is None


def test_a_table_without_gates_or_reference_files_shows_neither(tmp_path):
    """No run has gates: no gate column. A reference without predictions: "–", and nothing
    for the forest plot."""
    _record(tmp_path, "runs/a", [1, 0])
    _record(tmp_path, "runs/b", [1, 1])
    record = json.loads((tmp_path / "runs/a/metrics.json").read_text())
    del record["predictions"]
    (tmp_path / "runs/a/metrics.json").write_text(json.dumps(record))
    panels = []
    monkey = pytest.MonkeyPatch()
    monkey.setattr(results.figures, "forest_plot", lambda p, path: panels.append(p))
    try:
        results.write_tables(tmp_path, [_table(
            reference=lambda r, rows: None if r["variant"] == "a" else rows[0],
            compared=[("top-1", "test_top1")], reference_name="a")])
    finally:
        monkey.undo()
    lines = (tmp_path / "TABLES.md").read_text().splitlines()
    assert "| Variant | Seeds | Δ top-1 vs a (points, 95% CI; McNemar p) |" in lines
    assert "| b | 1 seed | – |" in lines and panels == [[]]


def test_a_row_over_seeds_links_its_first_seeds_figures(tmp_path):
    for s in range(2):
        run = _record(tmp_path, f"seed{s}/runs/a", [1, 0])
        for name in ("confusions.png", "per_class.csv"):
            (tmp_path / f"seed{s}/runs/a" / name).write_text("x")
    results.write_tables(tmp_path, [_table(confusions=True)])
    assert ("| a | 2 seeds | seed0: [pairs](seed0/runs/a/confusions.png), "
            "[per class](seed0/runs/a/per_class.csv) |") in (tmp_path / "TABLES.md").read_text()
    assert results._figures_cell(run) == ("[pairs](seed1/runs/a/confusions.png), "
                                          "[per class](seed1/runs/a/per_class.csv)")
    assert results._figures_cell({**run, "_path": str(tmp_path)}) == "–"


def test_check_kept_passes_only_predictions_equal_in_every_array(tmp_path, capsys):
    """A run trained again (`run_all.sh` sets its old predictions aside as *.kept.npz) is the
    same run only if keys, labels and logits all match; one changed logit, label or key, or
    a file it no longer writes, is named."""
    run = tmp_path / "run"
    run.mkdir()
    keys, labels, logits = ["a", "b"], [0, 1], np.array([[2.0, 1.0], [0.5, 3.0]])
    for name in ("test_predictions", "val_predictions"):
        results.save_predictions(run / f"{name}.kept.npz", keys, labels, logits)
        results.save_predictions(run / f"{name}.npz", keys, labels, logits)
    results.main(["check-kept", str(run)])
    assert "the same predictions as its kept record" in capsys.readouterr().out
    for changed in ((keys, labels, logits + np.eye(2)[0] * 1e-2), (keys, [0, 0], logits),
                    (["a", "c"], labels, logits)):
        results.save_predictions(run / "val_predictions.npz", *changed)
        assert results.differs_from_kept(run) == ["val_predictions.npz"]
    (run / "val_predictions.npz").unlink()
    with pytest.raises(SystemExit, match=r"differ from the kept record's: val_predictions.npz"):
        results.main(["check-kept", str(run)])
    with pytest.raises(SystemExit, match=r"empty: no \*.kept.npz"):
        results.main(["check-kept", str(tmp_path / "empty")])
