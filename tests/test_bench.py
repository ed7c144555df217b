"""The benchmark scripts run end to end at toy sizes and print their tables (no timing is
asserted: speed is for the benchmarks themselves to show)."""

import re

import pytest
from conftest import run_cli


def table_rows(text: str, first_cell: str) -> list[list[str]]:
    return [[cell.strip() for cell in line.strip("|").split("|")]
            for line in text.splitlines() if line.startswith(f"| {first_cell}")]


def test_train_speed_prints_a_row_per_model():
    result = run_cli("bench/train_speed.py", "--models", "vit_tiny", "resnet18",
                     "--batch-sizes", "2", "2", "--image-size", "32", "--steps", "1",
                     "--rounds", "1", "--bf16", "--torchvision-attention",
                     "--peak-tflops", "1")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "vit_tiny") + table_rows(result.stdout, "resnet18")
    assert [r[0] for r in rows] == ["vit_tiny", "resnet18"]
    for row in rows:  # seed, ours, ratio, bf16, torchvision attention (ViTs), MFU
        seed, ours, bf16 = float(row[2]), float(row[3]), float(row[5])
        assert min(seed, ours, bf16) > 0 and row[4] == f"{ours / seed:.2f}x"
        assert re.fullmatch(r"\d+\.\d%", row[7])
    tv_speed, ratio = re.fullmatch(r"(\S+) \(ours (\S+)x\)", rows[0][6]).groups()
    assert abs(float(ratio) - float(rows[0][3]) / float(tv_speed)) < 0.006  # printed rounded
    assert rows[1][6] == ""  # a CNN has no attention to compare


def test_train_speed_layouts_time_both_precisions_in_both_layouts():
    result = run_cli("bench/train_speed.py", "--models", "resnet18", "--batch-sizes", "2",
                     "--image-size", "32", "--steps", "1", "--rounds", "1", "--layouts")
    assert result.returncode == 0, result.stderr
    header = next(line for line in result.stdout.splitlines() if line.startswith("| model"))
    assert header.endswith("| fp32 + contiguous (img/s) | fp32 + channels_last (img/s) | "
                           "bf16 + contiguous (img/s) | bf16 + channels_last (img/s) |")
    [row] = table_rows(result.stdout, "resnet18")
    assert len(row) == 9 and all(float(cell) > 0 for cell in row[5:])
    both = run_cli("bench/train_speed.py", "--layouts", "--bf16")
    assert both.returncode == 2 and "not allowed with argument" in both.stderr


def test_data_speed_prints_every_pipeline_and_loader_row():
    result = run_cli("bench/data_speed.py", "--images", "4", "--repeats", "1",
                     "--loader-workers", "0", "1", "--epoch-images", "40")
    assert result.returncode == 0, result.stderr
    assert "epochs of 40 images" in result.stdout  # the flag reaches the loader table
    rows = [r for r in table_rows(result.stdout, "") if r[0] and not r[0].startswith("-")]
    pipelines = [r for r in rows if len(r) == 7 and r[1] in ("500 x 375", "1600 x 1200")]
    assert [r[1] for r in pipelines] == ["500 x 375", "1600 x 1200"] * 6
    assert all(float(cell) > 0 for r in pipelines for cell in (*r[2:5], r[6]))  # cache: r[6]
    assert sum(bool(r[5]) for r in pipelines) == 3  # the copy serves the 224 and 128 px rows
    loader_rows = [r for r in rows if len(r) == 6 and r[0].isdigit()]
    assert [r[0] for r in loader_rows] == ["0", "1"]
    assert all(float(cell) > 0 for r in loader_rows for cell in r[1:])


def test_memory_prints_both_steps_with_a_largest_batch():
    result = run_cli("bench/memory.py", "--models", "resnet18", "--batch-sizes", "2", "32",
                     "--image-size", "64", "--memory-gb", "4")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "resnet18")
    assert [r[1] for r in rows] == ["seed", "engine"]
    for row in rows:  # MB: torch alone takes more than 100
        small, large, per_image = (float(cell.replace(",", "")) for cell in row[2:5])
        assert small > 100 and per_image > 0  # activations grow with the batch
        assert per_image == pytest.approx((large - small) / 30, abs=1)  # printed rounded
        # the largest batch that fits 4 GB, extrapolated from batch 2's peak (MB per image
        # printed to the nearest MB)
        largest = int(row[5].split()[0])
        assert 1 + (4096 - small) / (per_image + 0.5) <= largest
        assert largest <= 2 + (4096 - small) / max(per_image - 0.5, 0.1)
    simclr = run_cli("bench/memory.py", "--models", "resnet18", "--batch-sizes", "2", "4",
                     "--image-size", "32", "--steps", "simclr")  # task 8's step imports
    assert simclr.returncode == 0 and "error" not in simclr.stdout, simclr.stdout[-2000:]
    assert [r[1] for r in table_rows(simclr.stdout, "resnet18")] == ["simclr"]


def test_profile_step_lists_operators_and_the_matmul_share():
    result = run_cli("bench/profile_step.py", "--model", "resnet18", "--batch-size", "2",
                     "--image-size", "32", "--steps", "1", "--rows", "5")
    assert result.returncode == 0, result.stderr
    rows = [r for r in table_rows(result.stdout, "") if r[0] != "operator" and "---" not in r[0]]
    assert len(rows) == 5
    shares = [float(r[2].rstrip("%")) for r in rows]
    assert shares == sorted(shares, reverse=True) and 0 < sum(shares) <= 100.05
    assert any(r[0].startswith("aten::convolution") for r in rows)  # a CNN's main cost
    share = re.search(r"convolutions .*: (\d+\.\d)% of the self CPU time", result.stdout)
    assert share and 0 < float(share.group(1)) <= 100


def test_cam_speed_times_both_ways_of_the_same_maps():
    result = run_cli("bench/cam_speed.py", "--model", "resnet18", "--image-size", "64",
                     "--batch-size", "2", "--rounds", "1")
    assert result.returncode == 0, result.stderr  # it checks the two ways' maps are equal
    rows = [r for r in table_rows(result.stdout, "") if r[0] and r[1][:1].isdigit()]
    assert len(rows) == 3 and all(float(r[1]) > 0 for r in rows)


def test_eval_speed_prints_no_grad_then_each_batch():
    result = run_cli("bench/eval_speed.py", "--models", "resnet18", "--image-size", "32",
                     "--batch-sizes", "4", "8", "--images", "8", "--rounds", "1")
    assert result.returncode == 0, result.stderr
    rows = table_rows(result.stdout, "resnet18")
    assert [(r[2], r[3]) for r in rows] == [("no_grad", "4"), ("inference_mode", "4"),
                                            ("inference_mode", "8")]
    assert all(float(r[4]) > 0 for r in rows)
    for row in rows:  # each speed against the first row's, as printed (rounded)
        assert float(row[5].rstrip("x")) == pytest.approx(float(row[4]) / float(rows[0][4]),
                                                          abs=0.006 + 0.05 / float(rows[0][4]))
    assert rows[0][5] == "1.00x"


def test_quick_profile_reports_every_table_it_ran(sample, tmp_path):
    """Table 1's three runs on generated data, a few photos each, then the report alone
    from the log the first call wrote."""
    root, _ = sample
    common = ["--data-root", str(root), "--limit", "8", "--tables", "1",
              "--results", str(tmp_path / "quick")]
    result = run_cli("bench/quick_profile.py", *common,
                     env_extra={"ARGS_task1_2_finetune": "--epochs 1 --image-size 32"})
    assert result.returncode == 0, result.stderr
    log = (tmp_path / "quick" / "profile.jsonl").read_text().splitlines()
    assert len(log) == 4  # three runs and the tables
    rows = table_rows(result.stdout, "**")
    shares = {r[0].strip("*"): float(r[3].strip("*%")) for r in rows}
    assert set(shares) == {"Table 1", "tables"}
    assert sum(shares.values()) == pytest.approx(100, abs=0.2)
    report = run_cli("bench/quick_profile.py", *common, "--report")
    assert report.returncode == 0 and report.stdout == result.stdout
