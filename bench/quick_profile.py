"""Where the quick study's time goes: every command `run_all.sh --quick` runs, each under a
sampling profiler, reported per table and per phase (reading and decoding photos,
augmentation, forward and backward, evaluation, CAM boxes, attacks, GAN and SimCLR steps,
figures, statistics, start-up), in seconds and as a share of the total, with the machine.

    python bench/quick_profile.py                        # the kit's CUB subset, 300 photos a split
    python bench/quick_profile.py --limit 0 --tables 1   # Table 1 on every photo
    python bench/quick_profile.py --avx2                 # an AMX Xeon limited to AVX2, fp32
    python bench/quick_profile.py --limit 0 --results results/quick   # the quick study itself
    python bench/quick_profile.py --report --results results/quick    # its table again

`--limit N` passes `--limit N` to every command (at most N photos a split: the stated
fraction the table is measured on; 0 runs every photo, as the study does). Each command
runs in its own process (one whose metrics.json exists is skipped, as run_all.sh skips
it; each command's phases go to <results>/profile.jsonl); a thread samples the main
thread's Python stack every 5 ms and gives the time since the last sample to the innermost
frame that names a phase (`PHASES`), so the phases add up to the wall time of the commands.
`--avx2` hides AMX and AVX-512 from oneDNN and ATen (ONEDNN_MAX_CPU_ISA=AVX2,
ATEN_CPU_CAPABILITY=avx2) and trains in fp32 (--amp off), the closest this workplace's
AMX machines come to an AVX2-only AMD EPYC.
"""

import argparse
import json
import os
import runpy
import shlex
import subprocess
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# (phase, file name, function names): the innermost frame that matches names the phase
PHASES = [
    ("photo check", "data.py", {"check_images"}),
    ("reading and decoding photos", "data.py", {"load_rgb"}),
    ("augmentation", "data.py", {"__getitem__"}),
    ("loader (collate, sampler)", "dataloader.py", {"__next__"}),
    ("localisers (boxes, CorLoc)", "localisers.py", None),
    ("detector", "detect.py", None),
    ("attacks", "fgsm.py", None),
    ("attacks", "adversarial.py", {"perturb", "robust_accuracy", "robust_validation"}),
    ("GAN steps", "gan.py", None),
    ("SimCLR steps", "pretrain.py", None),
    ("heatmaps", "maps.py", None),
    ("heatmaps", "heatmaps.py", None),
    ("evaluation", "engine.py", {"evaluate", "inference_speed", "count_gflops"}),
    ("evaluation", "probes.py", None),
    ("forward and backward", "engine.py", {"forward", "update", "train_epoch"}),
    ("forward and backward", "adversarial.py", {"adversarial_epoch"}),
    ("figures", "figures.py", None),
    ("CAM maps (Grad-CAM)", "cam.py", None),
    ("statistics and tables", "stats.py", None),
    ("statistics and tables", "results.py", None),
    ("model build and weights", "models.py", None),
    ("model build and weights", "checkpoint.py", None),
]
TABLES = {"task1_2_finetune": "Table 1", "task3_crop": "Table 2", "task4_dcgan": "Table 3",
          "task5_vit": "Table 4", "task6_heatmap": "Table 5", "task7_fgsm": "Table 6",
          "task8_simclr": "Table 7", "shared.results": "tables"}


def phase_of(frame) -> str:
    while frame is not None:
        code = frame.f_code
        name = Path(code.co_filename).name
        for phase, file, functions in PHASES:
            if name == file and (functions is None or code.co_name in functions):
                return phase
        frame = frame.f_back
    return "start-up and other"


def sample(out: Path, argv: list[str], interval: float = 0.005) -> None:
    """Run `argv` (a script or `-m module` and its arguments) in this process, sampling."""
    main_id = threading.main_thread().ident
    seconds = defaultdict(float)
    done = threading.Event()

    def sampler():
        last = time.perf_counter()
        while not done.wait(interval):
            frame = sys._current_frames().get(main_id)
            now = time.perf_counter()
            seconds[phase_of(frame)] += now - last
            last = now

    thread = threading.Thread(target=sampler, daemon=True)
    thread.start()
    sys.argv = argv[1:] if argv[0] == "-m" else argv
    try:
        if argv[0] == "-m":
            runpy.run_module(argv[1], run_name="__main__", alter_sys=True)
        else:
            sys.path.insert(0, str(Path(argv[0]).resolve().parent))
            runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as stop:
        if stop.code not in (0, None):
            raise
    finally:
        done.set()
        thread.join()
        out.write_text(json.dumps(seconds))


def machine(avx2: bool) -> str:
    import torch  # noqa: PLC0415

    from shared.engine import cpu_has_amx  # noqa: PLC0415 (torch loads only when reporting)

    model = next((line.split(":", 1)[1].strip() for line in
                  open("/proc/cpuinfo") if line.startswith("model name")), "unknown CPU")
    cores = len(os.sched_getaffinity(0))
    amx = "AMX" if cpu_has_amx() else "no AMX"
    if avx2:
        amx += ", limited to AVX2 (oneDNN and ATen), fp32"
    return f"{cores} cores of {model} ({amx}), torch {torch.__version__}, " \
           f"{torch.get_num_threads()} threads"


def commands(data_root: str, results: Path, datasets: list[str]) -> list[list[str]]:
    listing = subprocess.run(
        ["bash", "run_all.sh", "--quick", "--datasets", *datasets, "--dry-run"], cwd=ROOT,
        env={**os.environ, "DATA": data_root, "RESULTS": str(results)}, check=True,
        capture_output=True, text=True).stdout
    return [shlex.split(line)[1:] for line in listing.splitlines() if line.startswith("python ")]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data-root", default=str(ROOT.parent / "shared/data/cub100-real"))
    parser.add_argument("--datasets", nargs="+", default=["bird"])
    parser.add_argument("--limit", type=int, default=300,
                        help="photos a split for every command (0: all of them)")
    parser.add_argument("--tables", nargs="+", default=None,
                        help="only these tables (1-7), e.g. --tables 1 3")
    parser.add_argument("--avx2", action="store_true",
                        help="hide AMX and AVX-512 from torch and train in fp32")
    parser.add_argument("--results", type=Path, default=None,
                        help="run folders (default: a temporary folder)")
    parser.add_argument("--report", action="store_true",
                        help="run nothing: the table of what --results holds (profile.jsonl)")
    parser.add_argument("--sample", type=Path, help=argparse.SUPPRESS)  # internal
    args, rest = parser.parse_known_args()
    if args.sample:
        return sample(args.sample, rest[1:] if rest[:1] == ["--"] else rest)

    env = dict(os.environ)
    extra = ["--limit", str(args.limit)] if args.limit else []
    fp32 = []
    if args.avx2:
        env.update(ONEDNN_MAX_CPU_ISA="AVX2", ATEN_CPU_CAPABILITY="avx2")
        fp32 = ["--amp", "off"]  # detect.py has no --amp: its models run in fp32
    wanted = {f"Table {t}" for t in args.tables} | {"tables"} if args.tables else None
    with tempfile.TemporaryDirectory() as scratch:
        results = args.results or Path(scratch) / "quick"
        log = results / "profile.jsonl"  # a line a command: a killed profile still reports
        if not args.report:
            results.mkdir(parents=True, exist_ok=True)
            for argv in commands(args.data_root, results, args.datasets):
                table = TABLES[argv[1] if argv[0] == "-m" else argv[0].split("/")[0]]
                if wanted and table not in wanted:
                    continue
                if "--out" in argv and Path(argv[argv.index("--out") + 1], "metrics.json").exists():
                    continue  # finished: its phases are in the log already
                if argv[0] != "-m":
                    argv = argv + extra + (fp32 if "detect.py" not in argv[0] else [])
                started = time.perf_counter()
                sampled = Path(scratch) / "sample.json"
                subprocess.run([sys.executable, __file__, "--sample", str(sampled), "--", *argv],
                               cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL)
                wall = time.perf_counter() - started
                phases = json.loads(sampled.read_text())
                phases["process start and imports"] = wall - sum(phases.values())
                with open(log, "a") as f:
                    f.write(json.dumps({"table": table, "argv": argv, "wall": wall,
                                        "phases": phases, "limit": args.limit,
                                        "avx2": args.avx2}) + "\n")
                print(f"{wall:7.1f} s  {' '.join(argv)[:150]}", file=sys.stderr, flush=True)
        per_table = defaultdict(lambda: defaultdict(float))
        for line in log.read_text().splitlines():
            run = json.loads(line)
            args.limit, args.avx2 = run.get("limit", args.limit), run.get("avx2", args.avx2)
            for phase, seconds in run["phases"].items():
                per_table[run["table"]][phase] += seconds

    total = sum(sum(p.values()) for p in per_table.values())
    print(f"Machine: {machine(args.avx2)}. Photos a split: {args.limit or 'all'}. "
          f"Total {total:.0f} s.\n")
    print("| table | phase | seconds | share of the total |\n|---|---|---|---|")
    for table, phases in per_table.items():
        table_total = sum(phases.values())
        print(f"| **{table}** | all | **{table_total:.1f}** | **{table_total / total:.1%}** |")
        for phase, seconds in sorted(phases.items(), key=lambda item: -item[1]):
            if seconds >= 0.005 * total:
                print(f"| | {phase} | {seconds:.1f} | {seconds / total:.1%} |")
    overall = defaultdict(float)
    for phases in per_table.values():
        for phase, seconds in phases.items():
            overall[phase] += seconds
    print("\n| phase, all tables | seconds | share |\n|---|---|---|")
    for phase, seconds in sorted(overall.items(), key=lambda item: -item[1]):
        print(f"| {phase} | {seconds:.1f} | {seconds / total:.1%} |")


if __name__ == "__main__":
    main()
