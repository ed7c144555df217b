"""Intervals, paired tests and the tables built with them."""

import json
import math

import numpy as np
import pytest
from conftest import run_cli

from shared import errors, results, stats


@pytest.mark.parametrize("correct, total", [(8, 10), (0, 20), (20, 20), (1347, 1500)])
def test_wilson_interval_solves_its_quadratic(correct, total):
    """The Wilson bounds are the p0 with (p - p0)^2 = z^2 p0 (1 - p0) / n: solve that
    quadratic directly."""
    z, p = 1.959963984540054, correct / total
    a, b, c = 1 + z * z / total, -(2 * p + z * z / total), p * p
    roots = sorted(np.roots([a, b, c]).real)
    low, high = stats.wilson_interval(correct, total)
    assert low == pytest.approx(max(0.0, roots[0]), abs=1e-9)
    assert high == pytest.approx(min(1.0, roots[1]), abs=1e-9)
    assert low <= p <= high


def test_mcnemar_is_the_exact_binomial_on_discordant_pairs():
    # 2x2 table: both right 50, only A right 9, only B right 2, both wrong 39
    a = np.array([1] * 50 + [1] * 9 + [0] * 2 + [0] * 39, bool)
    b = np.array([1] * 50 + [0] * 9 + [1] * 2 + [0] * 39, bool)
    n, k = 11, 2
    expected = min(1.0, 2 * sum(math.comb(n, i) for i in range(k + 1)) / 2 ** n)
    assert stats.mcnemar_p(a, b) == pytest.approx(expected, rel=1e-12)
    assert stats.mcnemar_p(a, a) == 1.0


def test_interval_edges_and_confidence_levels():
    """No images: the whole range. A 90% Wilson interval is the quadratic's with z 1.645; a
    50% bootstrap interval lies inside the 95% one; the interval functions are seeded and
    refuse unpaired inputs."""
    assert stats.wilson_interval(0, 0) == (0.0, 1.0)
    z, p, n = 1.6448536269514722, 0.8, 10
    roots = sorted(np.roots([1 + z * z / n, -(2 * p + z * z / n), p * p]).real)
    assert stats.wilson_interval(8, 10, confidence=0.90) == pytest.approx(roots, abs=1e-9)
    rng = np.random.default_rng(4)
    a, b = rng.random(300) < 0.6, rng.random(300) < 0.7
    difference, low95, high95 = stats.paired_bootstrap(a, b)
    assert difference == pytest.approx(b.mean() - a.mean())
    _, low50, high50 = stats.paired_bootstrap(a, b, confidence=0.5)
    assert low95 < low50 < difference < high50 < high95
    assert stats.paired_bootstrap(a, b, seed=7) == stats.paired_bootstrap(a, b, seed=7)
    assert stats.paired_bootstrap(a, b, seed=7) != stats.paired_bootstrap(a, b, seed=8)
    with pytest.raises(ValueError, match="same images"):
        stats.paired_bootstrap(a, b[:-1])
    seeds = np.stack([b.astype(float) - a, (rng.random(300) < 0.65) - a.astype(float)])
    mean, low95, high95 = stats.two_level_bootstrap(seeds)
    assert mean == pytest.approx(seeds.mean())
    _, low50, high50 = stats.two_level_bootstrap(seeds, confidence=0.5)
    assert low95 < low50 < high50 < high95
    assert stats.two_level_bootstrap(seeds[0]) == stats.two_level_bootstrap(seeds[:1])
    assert np.isnan(stats.bootstrap_mean([])).all()
    values = rng.random(40)
    low50, high50 = stats.bootstrap_mean(values, confidence=0.5)
    low95, high95 = stats.bootstrap_mean(values)
    assert low95 < low50 < values.mean() < high50 < high95


def test_mcnemar_on_hand_worked_tables():
    """Discordant pairs only: 0 and 6 -> 2 x 0.5^6; 1 and 5 -> 2 x (1 + 6) / 64."""
    def table(only_a, only_b, both=10):
        a = np.array([1] * both + [1] * only_a + [0] * only_b, bool)
        b = np.array([1] * both + [0] * only_a + [1] * only_b, bool)
        return a, b

    assert stats.mcnemar_p(*table(0, 6)) == pytest.approx(2 * 0.5 ** 6)
    assert stats.mcnemar_p(*table(1, 5)) == pytest.approx(2 * 7 / 64)
    assert stats.mcnemar_p(*table(5, 1)) == pytest.approx(2 * 7 / 64)  # two-sided
    assert stats.mcnemar_p(*table(3, 3)) == 1.0


def test_paired_bootstrap_covers_the_true_difference_at_about_the_nominal_rate():
    rng = np.random.default_rng(0)
    covered, trials, n = 0, 200, 400
    for _ in range(trials):  # B is right where A is, plus on 5% more of the images
        a = rng.random(n) < 0.70
        b = a | (rng.random(n) < 0.05 / 0.30)
        truth = 0.05  # P(b) - P(a) = 0.3 * (0.05 / 0.3)
        _, low, high = stats.paired_bootstrap(a, b, resamples=500, seed=int(rng.integers(1e9)))
        covered += low <= truth <= high
    assert 0.88 <= covered / trials <= 0.99


def test_bootstrap_mean_covers_the_true_mean_at_about_the_nominal_rate_and_is_seeded():
    rng = np.random.default_rng(1)
    covered, trials = 0, 200
    for _ in range(trials):  # per-image values with mean 0.3, as deletion AUCs
        values = rng.beta(3, 7, size=150)
        low, high = stats.bootstrap_mean(values, resamples=500, seed=int(rng.integers(1e9)))
        covered += low <= 0.3 <= high
    assert 0.88 <= covered / trials <= 0.99
    values = rng.random(50)
    assert stats.bootstrap_mean(values, seed=3) == stats.bootstrap_mean(values, seed=3)
    low, high = stats.bootstrap_mean(values)
    # the percentile interval of the mean: about mean +- 1.96 sd / sqrt(n)
    half = 1.96 * values.std(ddof=1) / np.sqrt(len(values))
    assert low == pytest.approx(values.mean() - half, abs=0.02)
    assert high == pytest.approx(values.mean() + half, abs=0.02)


def test_expected_calibration_error():
    labels = np.array([0, 0, 1, 1])
    sure_and_right = np.array([[10.0, -10], [10, -10], [-10, 10], [-10, 10]])
    assert stats.expected_calibration_error(sure_and_right, labels) == pytest.approx(0, abs=1e-6)
    sure_and_wrong = -sure_and_right
    assert stats.expected_calibration_error(sure_and_wrong, labels) == pytest.approx(1, abs=1e-6)


def test_expected_calibration_error_on_a_hand_worked_example():
    """Confidences 0.95, 0.95, 0.62, 0.74 in 10 bins: bin (0.9, 1] holds two images, one
    right (|0.95 - 0.5| = 0.45), bin (0.6, 0.7] one right (|0.62 - 1| = 0.38), bin (0.7,
    0.8] one wrong (0.74): ECE = 2/4 x 0.45 + 1/4 x 0.38 + 1/4 x 0.74 = 0.505."""
    confidence = np.array([0.95, 0.95, 0.62, 0.74])
    logits = np.log(np.stack([confidence, 1 - confidence], axis=1))  # class 0 predicted
    labels = np.array([0, 1, 0, 1])
    assert stats.expected_calibration_error(logits, labels, bins=10) == pytest.approx(0.505)
    # 2 bins: (0.5, 1] holds all four: |0.815 - 0.5| = 0.315
    assert stats.expected_calibration_error(logits, labels, bins=2) == pytest.approx(0.315)
    # three classes, 15 bins (the default): confidences 0.45 (wrong), 0.9 (right) and 0.5
    # (right) in bins (0.4, 0.467], (0.867, 0.933] and (0.467, 0.533]: 1/3 (0.45 + 0.1 +
    # 0.5) = 0.35 (16 bins would put 0.45 and 0.5 together)
    probabilities = np.array([[0.45, 0.35, 0.2], [0.05, 0.9, 0.05], [0.5, 0.3, 0.2]])
    assert stats.expected_calibration_error(np.log(probabilities) + 3.0, np.array([1, 1, 0])
                                            ) == pytest.approx((0.45 + 0.1 + 0.5) / 3)
    # one confidence in each half: 2 bins give 1/2 |0.4 - 0| + 1/2 |0.8 - 1| = 0.3
    low_high = np.log(np.array([[0.4, 0.35, 0.25], [0.8, 0.1, 0.1]]))
    assert stats.expected_calibration_error(low_high, np.array([1, 0]), bins=2
                                            ) == pytest.approx(0.3)


def test_hits_count_ties_for_the_true_class_and_respect_k():
    logits = np.array([[1.0, 1.0, 0.0], [0.0, 2.0, 1.0], [3.0, 2.0, 1.0]], np.float16)
    labels = np.array([1, 2, 2])
    assert results.hits(logits, labels, 1).tolist() == [True, False, False]
    assert results.hits(logits, labels, 2).tolist() == [True, True, False]


def _run(root, name, variant, keys, correct, classes=3, task="task1_2_finetune", **args):
    """A run folder (Table 1's unless `task` says): its metrics.json and predictions file;
    `args` added to its recorded arguments."""
    folder = root / task / "bird" / name
    folder.mkdir(parents=True)
    labels = np.zeros(len(keys), np.int64)
    logits = np.where(np.asarray(correct)[:, None], np.eye(classes)[0], np.eye(classes)[1])
    logits = results.save_predictions(folder / "test_predictions.npz", keys, labels, logits)
    scores = results.merge(results.scored("test_top1", results.hits(logits, labels),
                                          "test_predictions.npz"))
    scores["metrics"] |= {"test_top5": 1.0, "best_val_top1": 0.5, "best_epoch": 1}
    record = {"task": task, "variant": variant, "dataset": "bird",
              "model": "resnet18", "weights": "none", "metrics": scores["metrics"],
              "ci95": scores["ci95"], "predictions": scores["predictions"],
              "data": {"train": 1, "val": 1, "test": len(keys)},
              "timing": {"train_seconds": 1.0}, "env": {"device": "cpu"},
              "args": {"recipe": "seed", "epochs": 1, "image_size": 32} | args}
    (folder / "metrics.json").write_text(json.dumps(record))
    return folder


def test_tables_show_intervals_and_paired_differences(tmp_path):
    keys = [str(i) for i in range(200)]
    rng = np.random.default_rng(1)
    a = rng.random(200) < 0.6
    b = a | (rng.random(200) < 0.3)
    baseline = _run(tmp_path, "baseline", "baseline", keys, a)
    pretrained = _run(tmp_path, "pretrained", "pretrained", keys, b)
    table = results.write_tables(tmp_path).read_text().split("## Table 1")[1].split("## ")[0]
    found = results.paired_difference(json.loads((pretrained / "metrics.json").read_text())
                                      | {"_dir": "p", "_path": str(pretrained)},
                                      json.loads((baseline / "metrics.json").read_text())
                                      | {"_dir": "b", "_path": str(baseline)}, "test_top1")
    assert found["difference"] == pytest.approx(100 * (b.mean() - a.mean()))
    low, high = stats.wilson_interval(int(b.sum()), 200)
    row = next(line for line in table.splitlines() if "| pretrained |" in line)
    assert f"{100 * b.mean():.1f} ({100 * low:.1f}–{100 * high:.1f})" in row
    assert f"{found['difference']:+.1f} (" in row and f"p {found['mcnemar_p']:.2g}" in row

    compared = run_cli("-m", "shared.results", "compare", str(baseline), str(pretrained))
    assert compared.returncode == 0, compared.stderr
    assert f"| test_top1 | 200 | {found['difference']:+.2f} |" in compared.stdout


def test_the_strong_row_without_its_seed_recipe_reference_shows_no_difference(tmp_path):
    keys = [str(i) for i in range(100)]
    _run(tmp_path, "pretrained-strong", "pretrained", keys, np.arange(100) < 80,
         recipe="strong")

    def difference():
        table = results.write_tables(tmp_path).read_text().split("## Table 1")[1]
        lines = table.split("## ")[0].splitlines()
        header = next(line for line in lines if line.startswith("| Model"))
        row = next(line for line in lines if "| strong |" in line)
        cells = dict(zip(header.split(" | "), row.split(" | "), strict=True))
        return cells["Δ top-1 vs its reference (points, 95% CI; McNemar p)"]

    assert difference() == "–"  # no seed-recipe run: nothing to compare, not itself
    _run(tmp_path, "pretrained", "pretrained", keys, np.arange(100) < 50)
    assert difference().startswith("+30.0 (")  # 80% against the seed recipe's 50%


def test_a_row_whose_gate_failed_gets_no_verdict(tmp_path):
    keys = [str(i) for i in range(100)]

    def pretrained_row(value, passed):
        root = tmp_path / str(value)
        _run(root, "baseline", "baseline", keys, np.arange(100) < 40)
        folder = _run(root, "pretrained", "pretrained", keys, np.arange(100) < 70)
        record = json.loads((folder / "metrics.json").read_text())
        record["gates"] = [results.gate("worked", value, 0.3, passed)]
        (folder / "metrics.json").write_text(json.dumps(record))
        table = results.write_tables(root).read_text().split("## Table 1")[1]
        assert "| Gate: did the method work? (validation) |" in table
        return next(line for line in table.splitlines() if "| pretrained |" in line)

    passed, failed = pretrained_row(0.5, True), pretrained_row(0.1, False)
    assert "| worked: 0.5 (threshold 0.3) pass | +30.0 (" in passed
    assert "| worked: 0.1 (threshold 0.3) FAIL | did not work at this budget |" in failed
    assert results.gate("unmeasured", None, 0.3, True)["passed"] is False


def test_tables_refuse_runs_tested_on_different_images(tmp_path):
    _run(tmp_path, "baseline", "baseline", [str(i) for i in range(50)], np.ones(50, bool))
    _run(tmp_path, "pretrained", "pretrained", [str(i) for i in range(1, 51)],
         np.ones(50, bool))
    with pytest.raises(errors.TestSetMismatch,
                       match="pretrained and task1_2_finetune/bird/baseline were tested on "
                             "different images"):
        results.write_tables(tmp_path)
    compared = run_cli("-m", "shared.results", "compare",
                       str(tmp_path / "task1_2_finetune" / "bird" / "baseline"),
                       str(tmp_path / "task1_2_finetune" / "bird" / "pretrained"))
    assert compared.returncode == 1 and "different images" in compared.stderr


def test_a_crop_row_is_compared_with_the_whole_photos_trained_alike(tmp_path):
    keys = [str(i) for i in range(100)]
    seed = np.arange(100) < 40  # the seed recipe's whole photos: 40% right
    strong = np.arange(100) < 80  # the strong recipe's: 80%
    _run(tmp_path, "pretrained", "pretrained", keys, seed)
    _run(tmp_path, "pretrained-strong", "pretrained", keys, strong, recipe="strong")
    crop = _run(tmp_path, "box-cam", "box-cam", keys, np.arange(100) < 70, task="task3_crop",
                recipe="strong", crop="box", train_boxes="pred", test_boxes="pred")
    record = json.loads((crop / "metrics.json").read_text())
    record["metrics"] |= {"localiser": "CAM", "detector_corloc": None}
    record["data"]["whole_image_fallback"] = {"test": 0}
    (crop / "metrics.json").write_text(json.dumps(record))
    table = results.write_tables(tmp_path).read_text().split("## Table 2")[1].split("## ")[0]
    row = next(line for line in table.splitlines() if "| box |" in line)
    assert "| strong, 32 px |" in row and "| -10.0 (" in row  # 70% against 80%, not 40%
    assert sum("| none (task 1-2) |" in line for line in table.splitlines()) == 2


def test_table4_takes_a_task1_2_run_only_if_it_measured_its_cost(tmp_path):
    keys = [str(i) for i in range(100)]
    cost = {"params_m": 3.5, "gflops": 0.38, "train_images_per_s": 30.0,
            "infer_images_per_s": 40.0, "peak_mem_mb": 1600.0, "train_seconds": 300.0}
    _run(tmp_path, "pretrained", "pretrained", keys, np.arange(100) < 40)  # no cost: Table 1 only
    strong = _run(tmp_path, "pretrained-strong", "pretrained", keys, np.arange(100) < 80,
                  recipe="strong", measure_cost=True)
    vit = _run(tmp_path, "vit_tiny", "vit_tiny", keys, np.arange(100) < 70, task="task5_vit",
               recipe="vit")
    for folder, gflops in ((strong, 0.38), (vit, 1.0)):
        record = json.loads((folder / "metrics.json").read_text())
        record["metrics"] |= cost | {"gflops": gflops}
        (folder / "metrics.json").write_text(json.dumps(record))
    table = results.write_tables(tmp_path).read_text().split("## Table 4")[1].split("## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| resnet18")]
    assert len(rows) == 2  # the ViT (more GFLOPs, first) and task 1-2's strong run
    assert "| vit |" in rows[0] and "| strong |" in rows[1]
    assert "| +10.0 (" in rows[1]  # 80% against the first row's 70%, paired


def test_the_two_level_interval_widens_with_seed_spread_and_is_the_image_one_when_seeds_agree():
    rng = np.random.default_rng(3)
    a, b = rng.random(400) < 0.6, rng.random(400) < 0.7
    difference = b.astype(float) - a
    one_seed = stats.paired_bootstrap(a, b)
    assert stats.two_level_bootstrap(np.stack([difference] * 3)) == pytest.approx(one_seed)
    widths = []
    for shift in (0.0, 0.05, 0.15):  # seeds 1 and 2 differ from seed 0 on that share
        flips = [rng.random(400) < shift for _ in range(2)]
        seeds = np.stack([difference, np.where(flips[0], difference + 1, difference),
                          np.where(flips[1], difference - 1, difference)])
        _, low, high = stats.two_level_bootstrap(seeds)
        widths.append(high - low)
    assert widths[0] == pytest.approx(one_seed[2] - one_seed[1])
    assert widths[0] < widths[1] < widths[2]


def test_a_row_over_three_seeds_pools_them_and_counts_the_seeds_that_agree(tmp_path):
    keys = [str(i) for i in range(200)]
    rng = np.random.default_rng(0)
    baselines, gains = [], [0.10, 0.06, -0.02]  # two seeds gain, one loses: 2/3 agree
    for seed, gain in enumerate(gains):
        base = rng.random(200) < 0.5
        better = base | (rng.random(200) < gain) if gain > 0 else base & (rng.random(200) > -gain)
        _run(tmp_path / f"seed{seed}", "baseline", "baseline", keys, base)
        _run(tmp_path / f"seed{seed}", "pretrained", "pretrained", keys, better)
        baselines.append((base, better))
    table = results.write_tables(tmp_path).read_text().split("## Table 1")[1].split("## ")[0]
    row = next(line for line in table.splitlines() if "| pretrained |" in line)
    per_seed = [100 * better.mean() for _, better in baselines]
    assert f"{np.mean(per_seed):.1f} (" in row and f"; sd {np.std(per_seed, ddof=1):.1f})" in row
    assert "| 3 seeds |" in row and table.count("| pretrained |") == 1
    differences = [100 * (better.mean() - base.mean()) for base, better in baselines]
    assert f"{np.mean(differences):+.1f} (" in row
    agree = sum(np.sign(d) == np.sign(np.mean(differences)) for d in differences)
    assert agree == 2 and ", 2/3 seeds agree" in row
    assert (tmp_path / "differences.png").stat().st_size > 0

    compared = run_cli("-m", "shared.results", "compare",
                       "--a", *(str(tmp_path / f"seed{s}/task1_2_finetune/bird/baseline")
                                for s in range(3)),
                       "--b", *(str(tmp_path / f"seed{s}/task1_2_finetune/bird/pretrained")
                                for s in range(3)))
    assert compared.returncode == 0, compared.stderr
    assert f"| test_top1 | 3 | 200 | {np.mean(differences):+.2f} |" in compared.stdout
    assert "2/3" in compared.stdout
    for d in differences:  # each seed's own difference beside the pooled one
        assert f"{d:+.2f}" in compared.stdout


def test_seeds_tested_on_different_images_are_refused_by_name(tmp_path):
    _run(tmp_path / "seed0", "baseline", "baseline", [str(i) for i in range(50)],
         np.ones(50, bool))
    _run(tmp_path / "seed1", "baseline", "baseline", [str(i) for i in range(1, 51)],
         np.ones(50, bool))
    with pytest.raises(errors.TestSetMismatch, match="seed1/task1_2_finetune/bird/baseline "
                                                     "and seed0/.* different images"):
        results.write_tables(tmp_path)
    compared = run_cli("-m", "shared.results", "compare",
                       "--a", str(tmp_path / "seed0/task1_2_finetune/bird/baseline"),
                       "--b", str(tmp_path / "seed1/task1_2_finetune/bird/baseline"))
    assert compared.returncode == 1 and "different images" in compared.stderr


def test_calibration_bins_are_closed_on_the_right_and_rows_are_softmaxed_apart():
    """Guo et al.'s bins are ((m - 1) / M, m / M]: with 2 bins a confidence of exactly 0.5
    (two equal logits, class 0 predicted, right) falls in the first bin and 0.8 (wrong) in
    the second: 1/2 |0.5 - 1| + 1/2 |0.8 - 0| = 0.65 (left-closed bins would give
    |0.65 - 0.5| = 0.15). Each row's softmax is its own: a row shifted by 1,000 changes
    nothing, and no row underflows against another's maximum."""
    logits = np.array([[0.0, 0.0], [np.log(4.0), 0.0]])
    labels = np.array([0, 1])
    assert stats.expected_calibration_error(logits, labels, bins=2) == pytest.approx(0.65)
    shifted = logits + np.array([[1000.0], [-1000.0]])
    assert stats.expected_calibration_error(shifted, labels, bins=2) == pytest.approx(0.65)


def test_mcnemar_reads_zero_one_hits_as_booleans():
    a = np.array([1.0, 1, 1, 1, 1, 0, 0, 0])  # hits as floats, as a predictions file may hold
    b = np.array([0.0, 0, 0, 0, 0, 0, 1, 1])
    # discordant: 5 only a, 2 only b (the image right for neither is concordant)
    expected = stats.mcnemar_p(a.astype(bool), b.astype(bool))
    assert expected == pytest.approx(2 * (1 + 7 + 21) / 2 ** 7)  # exact: 2 P(k <= 2 | 7)
    assert stats.mcnemar_p(a, b) == expected
    assert stats.mcnemar_p(a.astype(int), b.astype(int)) == expected


def test_wilson_interval_of_one_success_in_one_trial():
    """p = 1, n = 1, z = 1.96: centre (1 + z^2/2) / (1 + z^2) = 0.6033, half
    z sqrt(z^2 / 4) / (1 + z^2) = 0.3967: (0.2065, 1)."""
    low, high = stats.wilson_interval(1, 1)
    assert low == pytest.approx(0.2065, abs=1e-4) and high == pytest.approx(1.0)


def test_bootstrap_mean_edges_defaults_and_its_normal_limit():
    assert stats.bootstrap_mean([3.0]) == (3.0, 3.0)  # one value: nothing to resample
    low, high = stats.bootstrap_mean([1.0, 0.0, 0.0, 0.0])
    assert (low, high) != (0.0, 0.0) and high >= 0.5  # the first value is drawn too
    values = np.arange(400.0)  # symmetric: the percentile interval is the normal one
    low, high = stats.bootstrap_mean(values, resamples=20000)
    se = values.std() / np.sqrt(len(values))  # the bootstrap's own spread of the mean
    assert low == pytest.approx(values.mean() - 1.96 * se, abs=0.08 * se)
    assert high == pytest.approx(values.mean() + 1.96 * se, abs=0.08 * se)
    # the tables' intervals are the documented 2,000 seeded resamples (docs/results.md)
    rng = np.random.default_rng(5)
    hits, other = rng.random(60) < 0.5, rng.random(60) < 0.6
    assert stats.bootstrap_mean(values[:30]) == stats.bootstrap_mean(values[:30], 2000, 0)
    assert stats.paired_bootstrap(hits, other) == stats.paired_bootstrap(hits, other, 2000, 0)
    matrix = np.stack([hits, other]).astype(float)
    assert stats.two_level_bootstrap(matrix) == stats.two_level_bootstrap(matrix, 2000, 0)
    with pytest.raises(ValueError, match="^paired_bootstrap needs the same images for both$"):
        stats.paired_bootstrap(hits, other[:59])
