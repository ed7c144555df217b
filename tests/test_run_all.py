"""`run_all.sh` itself: `--quick` end to end on a tiny generated tree at toy settings, the
commands each mode prints, seeds, jobs side by side, and records carried between machines."""

import importlib.util
import itertools
import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import REPO

from shared.results import DATASET_NAMES, write_tables
from shared.sample_data import write_sample_data

TABLES = ["Table 1:", "Table 2:", "Table 2b:", "Table 3:", "Table 4:", "Table 5:", "Table 6:",
          "Table 7:"]


@pytest.mark.longest  # about 4 minutes each on one core, much of it 27 scripts starting up
@pytest.mark.parametrize("dataset", ["bird", "dog"])
def test_quick_builds_every_table_with_and_without_boxes(tmp_path, dataset):
    """Birds without true boxes (as the team kit's real CUB subset), dogs with them; one
    dataset a test, so that the suite's workers can share them out."""
    data = tmp_path / "data"
    write_sample_data(data, classes=3, per_class=8, size=48, seed=0)
    (data / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    results = tmp_path / "results"
    # the GANs for 4 epochs, not the quick study's 400 (7 of this test's 13 minutes when it
    # ran both datasets); their checks every 2 epochs, so the FID curve and gates still run
    # (test_dcgan.py tests them)
    env = {**os.environ, "DATA": str(data), "RESULTS": str(results),
           "ARGS_task8_simclr": "--simclr-batch-size 8",
           "ARGS_task4_dcgan": "--gan-epochs 4 --fid-every 2"}
    toy = ["--image-size", "32", "--epochs", "1", "--batch-size", "8"]
    done = subprocess.run(["bash", "run_all.sh", "--quick", "--datasets", dataset, *toy],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert ("no true boxes" in done.stdout) == (dataset == "bird")
    assert "photos on" in done.stdout.splitlines()[0]  # the rough time, before it starts
    tables = (results / "TABLES.md").read_text()
    for table in TABLES:
        assert f"## {table}" in tables
    table2 = tables.split("## Table 2:")[1].split("## Table 2b")[0]
    name = DATASET_NAMES[dataset]
    assert (f"| {name} | strong, 32 px | box | true boxes |" in table2) == (dataset == "dog")
    assert f"| {name} | strong, 32 px | box | CAM" in table2
    table4 = tables.split("## Table 4:")[1].split("## Table 5")[0]
    for model in ("tf_efficientnet_lite0", "tf_efficientnet_lite1", "tf_efficientnet_lite2",
                  "resnet18", "timm/vit_tiny_patch16_224"):
        assert sum(f"| {model} |" in line for line in table4.splitlines()) == 1, model
    # lite0's row is Table 1's strong run, which measured its cost; Table 4 did not train it
    run = results / "seed0"
    assert f"(seed0/task1_2_finetune/{dataset}/pretrained-strong/confusions.png)" in table4
    assert not (run / "task5_vit" / dataset / "tf_efficientnet_lite0").exists()
    assert (run / "task5_vit" / dataset / "resnet18" / "metrics.json").is_file()
    gan = json.loads((run / "task4_dcgan" / dataset / "dcgan" / "metrics.json").read_text())
    assert gan["args"]["gan_epochs"] == 4 and len(gan["gates"]) == 2  # both gates measured
    assert tables.count("| ImageNet → SimCLR |") == 3  # 3 label budgets
    finetune = json.loads((run / "task8_simclr" / dataset / "simclr" / "fraction-1" /
                           "finetune" / "metrics.json").read_text())["args"]
    assert (finetune["recipe"], finetune["freeze_stages"], finetune["freeze_bn"],
            finetune["label_smoothing"]) == ("lp-ft", 0, True, 0.0)  # task 8's LP-FT protocol
    # a second run finds every run finished and rebuilds the tables only
    again = subprocess.run(["bash", "run_all.sh", "--quick", "--datasets", dataset, *toy],
                           cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "== task" not in again.stdout and "finished already" in again.stdout
    # the same runs as a second seed: every table is built over seed groups of every task's
    # real records (summary records included), each row standing on both seeds
    shutil.copytree(run, results / "seed1")
    tables = write_tables(results).read_text()
    for table in TABLES:
        section = tables.split(f"## {table}")[1].split("\n## ")[0]
        rows = [line for line in section.splitlines() if line.startswith("| ") and
                "---" not in line][1:]
        assert rows and all("| 2 seeds |" in row for row in rows), table


def test_datasets_flag_names_what_it_expects():
    done = subprocess.run(["bash", "run_all.sh", "--quick", "--datasets", "cat"], cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "--datasets expects bird, dog or both, got 'cat'" in (
        done.stderr)


def test_help_prints_the_usage_and_runs_nothing(tmp_path):
    done = subprocess.run(["bash", "run_all.sh", "--quick", "--help"], cwd=REPO,
                          env={**os.environ, "RESULTS": str(tmp_path / "results")},
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "--seeds N" in done.stdout and "-h, --help" in done.stdout
    assert not any(line.startswith(("#", "set ", "cd ")) for line in done.stdout.splitlines())
    assert not (tmp_path / "results").exists()


def _dry_run(*flags: str, data: str = "nowhere", results: str = "results-dry",
             finished: bool = False) -> list[list[str]]:
    """The commands `run_all.sh --dry-run FLAGS` prints (with `finished`, also those it
    prints as finished, as commands)."""
    done = subprocess.run(["bash", "run_all.sh", "--dry-run", *flags], cwd=REPO,
                          env={**os.environ, "DATA": data, "RESULTS": results},
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    if finished:
        lines = [line.removeprefix("# finished: ") for line in lines]
    return [shlex.split(line) for line in lines if line.startswith("python ")]


def test_every_full_study_command_parses(tmp_path):
    """The full study is never run here: each of its commands at least gets through its
    script's own parser (a flag renamed in a script and not in configs/full.sh fails)."""
    commands = _dry_run()
    scripts = {argv[1] for argv in commands if argv[1].endswith(".py")}
    assert scripts == {f"{task}/train.py" for task in (
        "task1_2_finetune", "task3_crop", "task4_dcgan", "task5_vit", "task6_heatmap",
        "task7_fgsm", "task8_simclr")} | {"task3_crop/detect.py"}
    assert ["python", "-m", "shared.results", "results-dry"] == commands[-1]
    parsers = {}
    for argv in commands:
        if argv[1].endswith(".py"):
            if argv[1] not in parsers:
                spec = importlib.util.spec_from_file_location(
                    f"dry_{len(parsers)}", REPO / argv[1])
                module = importlib.util.module_from_spec(spec)
                spec.loader.exec_module(module)
                parsers[argv[1]] = module.parse_args
            args = parsers[argv[1]](argv[2:])
            assert str(args.out).startswith("results-dry/"), argv
    # every table of both datasets, the detector and oracle rows too (no data: boxes assumed),
    # the GAN without DiffAugment (the FID gate's baseline) too; one seed: all in seed0/
    outs = [argv[argv.index("--out") + 1] for argv in commands if "--out" in argv]
    assert len(outs) == len(set(outs)) == 54
    assert "results-dry/seed0/task3_crop/dog/box-oracle" in outs


def test_dry_run_prints_what_the_demo_runs_and_runs_nothing(tmp_path):
    commands = _dry_run("--demo")
    assert commands[0][:3] == ["python", "-m", "shared.sample_data"]
    assert sum(argv[1] == "task1_2_finetune/train.py" for argv in commands) == 6
    assert not (REPO / "results-dry").exists()


FAKE_PYTHON = """#!/usr/bin/env bash
# stands in for python: logs its arguments; a training script "finishes" by writing its
# --out's metrics.json and best.pt, except the run named by $KILL, which dies as if killed
echo "$*" >> "$LOG"
out=""
while [[ $# -gt 0 ]]; do [[ $1 == --out ]] && out=$2; shift; done
[[ -z $out ]] && exit 0
[[ $out == "${KILL:-none}" ]] && exit 137
mkdir -p "$out" && echo '{}' > "$out/metrics.json" && touch "$out/best.pt"
"""


def test_seeds_run_into_their_own_folders_and_a_killed_seed_resumes(tmp_path):
    """--seeds 2: every run once a seed, into <results>/seedK with --seed K; killed during
    seed 1, a second start skips every finished run and resumes the killed one."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(FAKE_PYTHON)
    (bin_dir / "python").chmod(0o755)
    results, log = tmp_path / "results", tmp_path / "log"
    killed = f"{results}/seed1/task1_2_finetune/bird/pretrained"
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
           "RESULTS": str(results), "KILL": killed}

    def start():
        log.unlink(missing_ok=True)
        done = subprocess.run(["bash", "run_all.sh", "--demo", "--seeds", "2", "--jobs", "1",
                               "--datasets", "bird"], cwd=REPO, env=env, capture_output=True,
                              text=True, timeout=120)
        return done, [shlex.split(line) for line in log.read_text().splitlines()]

    first, calls = start()
    assert first.returncode != 0  # stopped at the killed run
    calls = [argv for argv in calls if argv[0].endswith(".py")]  # the training scripts
    outs = [argv[argv.index("--out") + 1] for argv in calls]
    seed0 = [o for o in outs if "/seed0/" in o]
    assert outs[-1] == killed and len(seed0) == len(set(seed0)) > 10
    assert all(argv[argv.index("--seed") + 1] == o.split("/seed")[1][0]
               for argv, o in zip(calls, outs, strict=True))
    env["KILL"] = "none"
    second, calls = start()
    assert second.returncode == 0, second.stderr[-2000:]
    again = [argv for argv in calls if argv[0].endswith(".py")]
    assert again[0][again[0].index("--out") + 1] == killed and "--resume" in again[0]
    assert not any("/seed0/" in argv[argv.index("--out") + 1] for argv in again)
    assert [o.replace("/seed0/", "/seed1/") for o in seed0] == [
        o for o in outs + [a[a.index("--out") + 1] for a in again[1:]] if "/seed1/" in o]
    assert calls[-1][:3] == ["-m", "shared.results", str(results)]  # tables over both seeds


TIMED_PYTHON = """#!/usr/bin/env bash
# stands in for python: a training script logs its start (with OMP_NUM_THREADS) and end
# around a short sleep and "finishes" by writing its --out's metrics.json and best.pt,
# except the run named by $KILL, which fails once the next run has started beside it (or
# after 10 s); that run ends only half a second after the failure, so that which of the two
# comes first does not depend on the machine's load
out=""
for ((i = 1; i < $#; i++)); do [[ ${!i} == --out ]] && { j=$((i + 1)); out=${!j}; }; done
[[ $1 == *.py ]] || exit 0
echo "start $out $(date +%s.%N) ${OMP_NUM_THREADS:-unset}" >> "$LOG"
if [[ $out == "${KILL:-none}" ]]; then
  started=$(grep -c '^start' "$LOG")
  for _ in {1..100}; do (($(grep -c '^start' "$LOG") > started)) && break; sleep 0.1; done
  echo "the error that stopped it"
  echo "failed $out" >> "$LOG"
  exit 1
fi
sleep 0.3
if grep -q "^start $KILL " "$LOG"; then
  for _ in {1..100}; do grep -q '^failed' "$LOG" && break; sleep 0.1; done
  sleep 0.5
fi
mkdir -p "$out" && echo '{}' > "$out/metrics.json" && touch "$out/best.pt"
echo "end $out $(date +%s.%N)" >> "$LOG"
"""


def _run_timed(tmp_path, *flags, kill="none"):
    """run_all.sh --demo --datasets bird with TIMED_PYTHON: the completed process and each
    run's (start, end or None, OMP_NUM_THREADS) by its folder, below RESULTS/seed0."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    (bin_dir / "python").write_text(TIMED_PYTHON)
    (bin_dir / "python").chmod(0o755)
    results, log = tmp_path / "results", tmp_path / "log"
    (results / "data" / "CUB_200_2011").mkdir(parents=True, exist_ok=True)
    (results / "data" / "StanfordDogs").mkdir(exist_ok=True)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
           "RESULTS": str(results), "KILL": f"{results}/seed0/{kill}"}
    env.pop("OMP_NUM_THREADS", None)
    done = subprocess.run(["bash", "run_all.sh", "--demo", "--datasets", "bird", *flags],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    runs = {}
    for event, out, *rest in (line.split() for line in log.read_text().splitlines()):
        name = out.split("/seed0/")[1]
        if event == "start":
            runs[name] = [float(rest[0]), None, rest[1]]
        elif event == "end":
            runs[name][1] = float(rest[0])
    return done, runs


def test_parallel_runs_share_the_cores_and_wait_for_what_they_read(tmp_path):
    """--jobs 2: at most two runs at once, each with half the cores as threads; a run starts
    only after the runs whose results it reads have ended (Table 1 before the rest, the
    localisers before the crops, the GAN without DiffAugment before the one gated on it,
    each table after the one before), and Table 4's runs, which time their models, alone."""
    done, runs = _run_timed(tmp_path, "--jobs", "2")
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert len(runs) == 22 and all(end is not None for _, end, _ in runs.values())
    events = sorted([(start, 1) for start, _, _ in runs.values()]
                    + [(end, -1) for _, end, _ in runs.values()])
    at_once = [sum(step for _, step in events[:i + 1]) for i in range(len(events))]
    assert max(at_once) == 2

    def ended_before(later, earlier):
        return all(runs[e][1] <= runs[lo][0] for e in earlier for lo in later)

    table = {name: name.split("/")[0] for name in runs}
    order = ["task1_2_finetune", "task3_crop", "task4_dcgan", "task5_vit", "task6_heatmap",
             "task7_fgsm", "task8_simclr"]
    for before, after in itertools.pairwise(order):
        assert ended_before([n for n in runs if table[n] == after],
                            [n for n in runs if table[n] == before]), after
    crops = [f"task3_crop/bird/{c}" for c in ("box-centre", "box-cam", "box-cam-tta")]
    assert ended_before(crops, ["task3_crop/bird/centre", "task3_crop/bird/cam"])
    assert ended_before(["task4_dcgan/bird/dcgan"], ["task4_dcgan/bird/no-diffaugment"])
    cores = os.cpu_count()
    for name, (start, end, threads) in runs.items():
        if table[name] == "task5_vit":
            assert threads == "unset"  # alone: every core
            assert not any(s < end and start < e for other, (s, e, _) in runs.items()
                           if other != name)
        else:
            assert threads == str(max(1, cores // 2)), name


def test_a_failed_parallel_run_stops_the_study_and_is_named(tmp_path):
    """--jobs 2 with one run failing: the run beside it finishes, no other starts, and the
    error names the failed run's folder and shows its log's last lines."""
    done, runs = _run_timed(tmp_path, "--jobs", "2", kill="task7_fgsm/bird/standard")
    assert done.returncode != 0
    assert "this run failed:" in done.stderr and "task7_fgsm/bird/standard " in done.stderr
    assert "the error that stopped it" in done.stderr and "standard/run_all.log" in done.stderr
    assert runs["task7_fgsm/bird/standard"][1] is None
    assert runs["task7_fgsm/bird/fgsm"][1] is not None  # the run beside it
    assert all(end is not None for name, (_, end, _) in runs.items() if "task7" not in name)
    assert not any(n.startswith(("task7_fgsm/bird/fast", "task7_fgsm/bird/pgd", "task8"))
                   for n in runs)
    assert (tmp_path / "results/seed0/task7_fgsm/bird/standard/run_all.log").is_file()


def test_jobs_flag_names_what_it_expects():
    done = subprocess.run(["bash", "run_all.sh", "--demo", "--jobs", "0", "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--jobs expects a whole number of at least 1, got '0'" in done.stderr


KEPT_PYTHON = """#!/usr/bin/env bash
# stands in for python: a training script logs its --out and OMP_NUM_THREADS, "finishes"
# with a metrics.json (3 threads), a best.pt and a predictions file holding $VERSION;
# check-kept compares that file with the kept one byte for byte
if [[ $1 == -m && $3 == check-kept ]]; then
  exec cmp -s "$4/test_predictions.npz" "$4/test_predictions.kept.npz"
fi
[[ $1 == *.py ]] || exit 0
out=""
while [[ $# -gt 0 ]]; do [[ $1 == --out ]] && out=$2; shift; done
echo "$out" >> "$LOG"
echo "${OMP_NUM_THREADS:-unset}" >> "$LOG.threads"
mkdir -p "$out" && touch "$out/best.pt"
echo '{"env": {"device": "cpu", "threads": 3}}' > "$out/metrics.json"
echo "$VERSION" > "$out/test_predictions.npz"
"""


def test_a_checkpoint_left_behind_is_trained_again_and_must_match_its_kept_record(tmp_path):
    """A study carried over with its records but no checkpoints: the run that reads Table 1's
    reference model first trains it again, and goes on only if its predictions equal the
    kept ones; if they differ, the kept record is put back, the new model removed, and it
    stops."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python").write_text(KEPT_PYTHON)
    (bin_dir / "python").chmod(0o755)
    results, log = tmp_path / "results", tmp_path / "log"
    (results / "data" / "CUB_200_2011").mkdir(parents=True)
    (results / "data" / "StanfordDogs").mkdir()
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "LOG": str(log),
           "RESULTS": str(results), "VERSION": "first"}
    env.pop("OMP_NUM_THREADS", None)  # pytest-xdist sets it for its worker (conftest.py)
    reference = results / "seed0" / "task1_2_finetune" / "bird" / "pretrained"
    standard = results / "seed0" / "task7_fgsm" / "bird" / "standard"

    def start(version):
        log.write_text("")
        Path(f"{log}.threads").write_text("")
        done = subprocess.run(["bash", "run_all.sh", "--demo", "--jobs", "1", "--datasets",
                               "bird"], cwd=REPO, env={**env, "VERSION": version},
                              capture_output=True, text=True, timeout=120)
        return done, log.read_text().split()

    first, trained = start("first")
    assert first.returncode == 0, first.stderr[-2000:]
    assert str(reference) in trained and str(standard) in trained

    def carry_over():  # records without checkpoints; a run that reads one not done
        for checkpoint in results.rglob("*.pt"):
            checkpoint.unlink()
        (standard / "metrics.json").unlink()

    carry_over()
    same, trained = start("first")
    assert same.returncode == 0, same.stderr[-2000:]
    assert trained == [str(reference), str(standard)]
    assert Path(f"{log}.threads").read_text().split() == ["3", "unset"]  # the record's threads
    assert "is gone and its run's record is kept: training" in same.stdout
    assert (reference / "best.pt").is_file() and (reference / "metrics.json").is_file()
    assert not list(reference.glob("*.kept*"))

    carry_over()
    other, trained = start("second")
    assert other.returncode != 0
    assert trained == [str(reference)]  # the run that reads it did not start
    assert f"{reference} trained again does not reproduce its kept record" in other.stderr
    assert (reference / "test_predictions.npz").read_text() == "first\n"  # the record put back
    assert (reference / "metrics.json").is_file() and not list(reference.glob("*.kept*"))
    assert not (reference / "best.pt").exists()


def test_dry_run_marks_the_finished_runs_of_a_study(tmp_path):
    """What is left of a study at a glance: a run with its metrics.json is printed as a
    comment ('# finished: python ...'), every other one as its command, in the same order."""
    flags = ("--demo", "--seeds", "2")
    every = _dry_run(*flags, results=str(tmp_path))
    finished = tmp_path / "seed1" / "task1_2_finetune" / "bird" / "baseline"
    finished.mkdir(parents=True)
    (finished / "metrics.json").write_text("{}")
    (tmp_path / "seed0" / "task1_2_finetune" / "bird" / "pretrained").mkdir(parents=True)
    left = _dry_run(*flags, results=str(tmp_path))
    assert _dry_run(*flags, results=str(tmp_path), finished=True) == every
    (marked,) = [argv for argv in every if argv not in left]
    assert marked[marked.index("--out") + 1] == str(finished) and len(left) == len(every) - 1


def test_seed_flag_runs_one_seed_of_the_study():
    """--seed K: exactly the runs --seeds N gives seed K (one seed a machine or core), into
    seedK/ with --seed K; a value that is not a whole number is named."""
    three = _dry_run("--demo", "--seeds", "3")
    one = _dry_run("--demo", "--seed", "2")
    seed2 = [argv for argv in three if any("/seed2/" in a for a in argv)]
    assert seed2 and [argv for argv in one if argv[1].endswith(".py")] == seed2
    assert all(argv[argv.index("--seed") + 1] == "2" for argv in seed2)
    assert one[-1] == ["python", "-m", "shared.results", "results-dry"]
    done = subprocess.run(["bash", "run_all.sh", "--demo", "--seed", "-1", "--dry-run"],
                          cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 2
    assert "--seed expects a whole number of 0 or more, got '-1'" in done.stderr
