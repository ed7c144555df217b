"""Saving, loading and resuming, once for every script.

- `load`: every file the project reads with torch goes through it: `weights_only=True` and
  an explicit allow-list (none beyond torch's tensors and containers by default), so no
  file can run code; a refused, truncated or foreign file is one line naming it.
- `save_atomic`: a temporary file, then a rename; a full disk says so, naming the file, and
  leaves the previous checkpoint in place.
- `claim_run_folder`: a folder that holds a run is never written into without --resume.
- `Resumable`: the parts of a training loop (modules, optimisers, schedules, RNG) saved to
  one file each epoch and restored by --resume.
"""

from __future__ import annotations

import errno
import os
import pickle
import shutil
import tempfile
from pathlib import Path

import torch

from shared.errors import CheckpointError


def numpy_globals() -> list:
    """Plain numpy arrays, dtypes and scalars (no object arrays' classes): what published
    MMDetection checkpoints hold besides tensors. No function here calls anything else."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, core.multiarray.scalar,
            *{type(np.dtype(code)) for code in np.typecodes["All"]}]


def load(path: str | os.PathLike, what: str = "checkpoint", allow: list = ()):
    """`torch.load(path, weights_only=True)` on the CPU with only `allow` added to torch's
    own allow-list. `what` names the file's role in errors (e.g. "--resume")."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path}: no such file")
    try:
        with torch.serialization.safe_globals(list(allow)):
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        message = str(e)
        refused = [line.strip() for line in message.splitlines() if "GLOBAL" in line]
        if refused:
            raise CheckpointError(
                f"{what} {path} holds more than tensors ({refused[0][:160]}): refused, since "
                "loading it could run code") from None
        raise CheckpointError(_not_torch(what, path, message)) from None
    except (RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError) as e:
        raise CheckpointError(_not_torch(what, path, str(e))) from None


def _not_torch(what: str, path: Path, why: str) -> str:
    lines = why.strip().splitlines() or ["?"]
    first = next((line for line in lines if "Unsupported operand" in line), lines[0])[:160]
    return (f"{what} {path} is truncated or not a PyTorch file ({first}); delete it to start "
            "afresh, or restore it from a copy")


def save_atomic(obj, path: Path) -> None:
    """Write to `<path>.tmp`, then rename: a kill or a full disk never leaves a half
    checkpoint, and the previous one stays until the new one is whole."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        kept = " (the previous one is kept)" if path.exists() else ""
        if disk_full(e, path.parent):
            raise CheckpointError(f"the disk is full: could not write {path}{kept}; free some "
                                  "space and rerun with --resume") from None
        raise CheckpointError(f"could not write {path}{kept}: {e}") from None


def disk_full(error: Exception, folder: Path) -> bool:
    """torch's zip writer reports a full disk as 'basic_ios::clear: iostream error', so the
    free space decides where errno does not."""
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
        return True
    try:
        return shutil.disk_usage(folder).free < 2**20
    except OSError:
        return False


# ------------------------------------------------------------------------------ run folders

def claim_run_folder(out: str | os.PathLike, resume: bool) -> Path:
    """The run folder, created (by the main process). One that holds files is refused
    unless `resume`; so is an `--out` that is a file, lies under a file or is read-only.
    Under torchrun every process checks before any writes, then they wait for each other.
    A script claims its folder once, before it writes anything there."""
    out = Path(out)
    resolved = out.resolve()
    for parent in (resolved, *resolved.parents):
        if parent.exists() and not parent.is_dir():
            raise CheckpointError(f"--out {out}: {parent} is a file, not a folder")
    if out.is_dir() and any(out.iterdir()) and not resume:
        held = ", ".join(sorted(p.name for p in out.iterdir())[:4])
        raise CheckpointError(f"{out} already holds a run ({held}): pass --resume to "
                              "continue it, or choose another --out")
    _barrier()
    if _rank() == 0:
        try:  # a probe file: permissions alone say nothing for root or a read-only mount
            out.mkdir(parents=True, exist_ok=True)
            tempfile.TemporaryFile(dir=out).close()
        except OSError as e:
            raise CheckpointError(f"--out {out}: cannot write there ({e.strerror or e})"
                                  ) from None
    _barrier()
    return out


def _rank() -> int:
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def _barrier() -> None:
    dist = torch.distributed
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


# ------------------------------------------------------------------------------- resuming


class Resumable:
    """A loop's state in one file: `parts` (modules, optimisers, schedulers, scalers: anything
    with state_dict / load_state_dict) plus the RNG and the loop's own plain values.

        state = Resumable(out / "last.pt", model=model, optimizer=optimizer)
        extra = state.restore() if args.resume else None   # None: start afresh
        ...
        state.save(epoch=epoch + 1, history=history)        # each epoch, main process
    """

    def __init__(self, path: Path, **parts):
        self.path, self.parts = Path(path), parts

    def restore(self) -> dict | None:
        """The saved plain values, the parts and the RNG restored; None without a file."""
        if not self.path.exists():
            return None
        saved = load(self.path, "--resume")
        try:
            for name, part in self.parts.items():
                part.load_state_dict(saved["parts"][name])
            torch.set_rng_state(saved["rng_cpu"])
            if saved["rng_cuda"] and torch.cuda.is_available():
                torch.cuda.set_rng_state_all(saved["rng_cuda"])
        except (KeyError, TypeError, RuntimeError, ValueError) as e:
            raise CheckpointError(f"--resume {self.path} does not fit this run ({e}); start "
                                  "afresh in another --out") from None
        return saved["values"]

    def save(self, **values) -> None:
        save_atomic({"parts": {name: part.state_dict() for name, part in self.parts.items()},
                     "values": values, "rng_cpu": torch.get_rng_state(),
                     "rng_cuda": torch.cuda.get_rng_state_all()
                     if torch.cuda.is_available() else []}, self.path)
