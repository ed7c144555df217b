import atexit
import importlib
import os
import shutil
import subprocess
import sys
import tempfile
import tomllib
from pathlib import Path

import pytest

from shared.sample_data import write_sample_data

REPO = Path(__file__).resolve().parents[1]
# a task's helper modules are imported by their own names, as its scripts import them (so a
# task folder runs under any name); the scripts themselves as task<N>_<name>.train
sys.path[1:1] = [str(folder) for folder in sorted(REPO.glob("task*_*")) if folder.is_dir()]
# under pytest-xdist (the README's `-n 2`) each worker gets its own share of the cores, so
# its torch threads and its subprocesses' (the engine takes one thread a core it may use)
# never contend with the other worker's
_worker, _workers = os.environ.get("PYTEST_XDIST_WORKER"), os.environ.get(
    "PYTEST_XDIST_WORKER_COUNT")
if _worker and _workers and int(_workers) <= len(os.sched_getaffinity(0)):
    _cores = sorted(os.sched_getaffinity(0))[int(_worker.removeprefix("gw"))::int(_workers)]
    os.sched_setaffinity(0, _cores)
    os.environ["OMP_NUM_THREADS"] = str(len(_cores))  # torch's default, before it loads
if REPO.name == "mutants":  # mutmut's copy of the repository (pyproject.toml): it knows a
    # task's mutated module by its path, so `import fgsm` must give task7_fgsm.fgsm
    settings = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["mutmut"]
    for path in sorted({p.relative_to(REPO) for pattern in settings["only_mutate"]
                        for p in REPO.glob(pattern)}):
        if path.parts[0].startswith("task"):
            sys.modules[path.stem] = importlib.import_module(".".join(path.with_suffix("").parts))
# the photo-check and decoded caches: the tests' own, not the user's, and removed after
if "FGVC_CACHE" not in os.environ:
    os.environ["FGVC_CACHE"] = tempfile.mkdtemp(prefix="fgvc-cache-")
    atexit.register(shutil.rmtree, os.environ["FGVC_CACHE"], ignore_errors=True)


def pytest_collection_modifyitems(items):
    """Each worker's share starts with its own `longest` test. Worksteal first hands worker
    k the k-th contiguous slice of this order and steals only from the end of a queue, so
    two longest tests in one slice would run one after the other on one worker."""
    longest = [item for item in items if item.get_closest_marker("longest")]
    rest = [item for item in items if not item.get_closest_marker("longest")]
    workers = int(_workers or 1)
    ordered = []
    for k in range(workers):
        share = (len(items) - len(ordered)) // (workers - k)  # what worksteal sends worker k
        mine = longest[k::workers]
        taken = max(0, share - len(mine))
        ordered += mine + rest[:taken]
        rest = rest[taken:]
    items[:] = ordered + rest


@pytest.fixture(scope="session")
def sample(tmp_path_factory):
    """Generated CUB and Dogs in the official layouts; read-only for tests."""
    root = tmp_path_factory.mktemp("sample")
    written = write_sample_data(root, classes=4, per_class=10, size=64, seed=0)
    return root, written


def run_cli(*args: str, cwd=REPO, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    """Run `python ARGS` from the repository root, the way a user does."""
    env = {**os.environ, **(env_extra or {})}
    return subprocess.run([sys.executable, *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env=env)


def assert_predictions_reproduce(run: Path) -> dict:
    """Every accuracy of a run's metrics.json is backed by its predictions file, recomputes
    from it exactly, and carries the 95% Wilson interval of its hits in that file. Returns
    the record."""
    import json

    import numpy as np
    import pytest

    from shared import results, stats

    record = json.loads((run / "metrics.json").read_text())
    assert record["predictions"] and record["predictions"].keys() == record["ci95"].keys()
    for name, file in record["predictions"].items():
        saved = results.load_predictions(run / file)
        assert saved["logits"].dtype == np.float16 and saved["label"].dtype == np.int64
        assert saved["index"].dtype.kind == "U" and len(set(saved["index"])) == len(saved["index"])
        k = 5 if name.endswith("top5") else 1
        hits = results.hits(saved["logits"], saved["label"], k)
        assert float(np.mean(hits)) == results.metric(record, name), name
        assert record["ci95"][name] == pytest.approx(
            stats.wilson_interval(int(hits.sum()), len(hits))), name
    return record
