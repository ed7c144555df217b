import os
import subprocess
import sys
from pathlib import Path

import pytest

from shared.sample_data import write_sample_data

REPO = Path(__file__).resolve().parents[1]


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
