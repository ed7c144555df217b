"""Nothing runs, nothing is lost, nothing is silently wrong: every file the project loads
goes through one safe loader; run folders are guarded; bad flags and files give one line."""

import os
import pickle
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import run_cli

from shared import checkpoint, models
from shared.errors import CheckpointError

# ------------------------------------------------------------------------ malicious files


class Reduce:
    """Unpickling this runs `touch <marker>`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def getattr_gadget(marker: Path) -> bytes:
    """getattr(__import__('os'), 'system')('touch <marker>') as a protocol-0 pickle: what
    an allow-list with builtins.getattr would let through."""
    return (b"cbuiltins\ngetattr\n(cbuiltins\n__import__\n(Vos\ntRVsystem\ntR(V"
            + f"touch {marker}".encode() + b"\ntR.")


def with_data_pkl(path: Path, payload: bytes) -> None:
    """A real torch zip file whose data.pkl is replaced by `payload`."""
    torch.save({"model": {}}, path)
    with zipfile.ZipFile(path) as source:
        entries = {name: source.read(name) for name in source.namelist()}
    with zipfile.ZipFile(path, "w") as target:
        for name, content in entries.items():
            target.writestr(name, payload if name.endswith("/data.pkl") else content)


def write_payload(kind: str, path: Path, marker: Path) -> Path:
    if kind == "reduce-zip":
        torch.save({"model": Reduce(marker)}, path)
    elif kind == "reduce-legacy":
        torch.save({"model": Reduce(marker)}, path, _use_new_zipfile_serialization=False)
    elif kind == "getattr-zip":
        with_data_pkl(path, getattr_gadget(marker))
    elif kind == "truncated":
        torch.save({"model": {"w": torch.zeros(1000)}}, path)
        path.write_bytes(path.read_bytes()[:600])
    else:  # not a torch file at all
        path.write_text("model weights, honest\n")
    return path


PAYLOADS = ("reduce-zip", "reduce-legacy", "getattr-zip", "truncated", "text")


def test_the_payloads_are_live(tmp_path):
    """The gadgets do run code under an unrestricted unpickler (so the tests below that
    they do not would fail if the loader let them through)."""
    pickle.loads(getattr_gadget(tmp_path / "a"))
    assert (tmp_path / "a").exists()
    torch.load(write_payload("reduce-zip", tmp_path / "f.pt", tmp_path / "b"),
               weights_only=False)
    assert (tmp_path / "b").exists()


@pytest.mark.parametrize("kind", PAYLOADS)
def test_every_python_load_point_refuses_them(kind, tmp_path):
    marker = tmp_path / "ran"
    path = write_payload(kind, tmp_path / "file.pt", marker)
    expected = "holds more than tensors" if kind in PAYLOADS[:3] else "truncated or not"
    model, spec = models.build_model("resnet18", 4, "none")
    loads = [
        lambda: checkpoint.load(path, "--resume"),
        lambda: checkpoint.load(path, "checkpoint", checkpoint.numpy_globals()),  # mmengine's
        lambda: models.build_model("resnet18", 4, str(path)),
        lambda: models.load_classifier(path, ["a", "b", "c", "d"]),
        lambda: checkpoint.Resumable(path, model=model).restore(),
    ]
    for load in loads:
        with pytest.raises(CheckpointError, match=expected) as error:
            load()
        assert str(path) in str(error.value) and "\n" not in str(error.value)
    assert not marker.exists()


def small(root, out, *extra):
    return ("--dataset", "bird", "--data-root", str(root), "--out", str(out), "--model",
            "resnet18", "--image-size", "32", "--batch-size", "8", "--epochs", "1",
            "--val-fraction", "0.25", "--device", "cpu", *extra)


def test_every_cli_load_point_refuses_them(sample, tmp_path):
    """Each file a script loads, fed a malicious or broken file (the kinds in turn): no code
    runs, and the script ends with one line naming the file."""
    root, _ = sample
    marker = tmp_path / "ran"
    detector = ("task3_crop/detect.py", "--dataset", "dog", "--data-root", str(root),
                "--detector", "small", "--backbone-weights", "none", "--image-scale", "64",
                "64", "--limit", "8")
    cases = [  # (where the file goes, the command, what to run first to place it)
        ("weights.pt", ("task1_2_finetune/train.py", *small(root, tmp_path / "a",
                                                          "--weights", "{f}"))),
        ("b/last.pt", ("task1_2_finetune/train.py", *small(root, tmp_path / "b",
                                                          "--variant", "baseline",
                                                          "--resume"))),
        ("best.pt", ("task6_heatmap/train.py", *small(root, tmp_path / "c",
                                                     "--checkpoint", "{f}"))),
        ("best2.pt", ("task7_fgsm/train.py", *small(root, tmp_path / "d", "--evaluate",
                                                   "{f}"))),
        ("judge.pt", ("task4_dcgan/train.py", *small(root, tmp_path / "e", "--weights",
                                                    "none", "--gan-epochs", "1",
                                                    "--gan-batch-size", "8",
                                                    "--synthetic-per-class", "1",
                                                    "--judge", "{f}"))),
        ("f/gan/last.pt", ("task4_dcgan/train.py", *small(root, tmp_path / "f", "--weights",
                                                         "none", "--resume"))),
        ("g/pretrain.pt", ("task8_simclr/train.py", *small(root, tmp_path / "g",
                                                          "--simclr-batch-size", "8",
                                                          "--resume"))),
        ("h.pth", (*detector, "--epochs", "0", "--detector-weights", "{f}",
                   "--out", str(tmp_path / "h"))),
        ("i/mmdet/epoch_1.pth", (*detector, "--epochs", "2", "--resume",
                                 "--out", str(tmp_path / "i"))),
    ]
    for number, (place, command) in enumerate(cases):
        kind = PAYLOADS[number % len(PAYLOADS)]
        path = tmp_path / place
        path.parent.mkdir(parents=True, exist_ok=True)
        write_payload(kind, path, marker)
        if place.startswith("i/"):  # mmengine resumes from the file named here
            (path.parent / "last_checkpoint").write_text(str(path))
        result = run_cli(*(arg.replace("{f}", str(path)) for arg in command))
        last = result.stderr.strip().splitlines()[-1]
        assert result.returncode != 0, (place, result.stdout[-2000:])
        assert last.startswith("error: ") and str(path) in last, (place, kind,
                                                                   result.stderr[-3000:])
        assert not marker.exists(), place


# ---------------------------------------------------------------------- saving and folders


def test_a_full_disk_names_the_file_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    checkpoint.save_atomic({"epoch": 1}, path)

    def full_disk(obj, file):  # what torch's zip writer does when the disk fills
        Path(file).write_bytes(b"half a checkpoint")
        raise RuntimeError("basic_ios::clear: iostream error")

    monkeypatch.setattr(torch, "save", full_disk)
    monkeypatch.setattr(checkpoint.shutil, "disk_usage",
                        lambda folder: type("Usage", (), {"free": 0})())
    with pytest.raises(CheckpointError, match="the disk is full") as error:
        checkpoint.save_atomic({"epoch": 2}, path)
    assert str(path) in str(error.value) and "previous one is kept" in str(error.value)
    assert not (tmp_path / "last.pt.tmp").exists()
    monkeypatch.undo()
    assert checkpoint.load(path) == {"epoch": 1}


def test_run_folders_are_guarded(tmp_path):
    (tmp_path / "file").write_text("x")
    for out, message in ((tmp_path / "file", "is a file"), (tmp_path / "file" / "run", "is a file"),
                         (Path("/proc/fgvc-test-run"), "cannot write there")):
        with pytest.raises(CheckpointError, match=message):
            checkpoint.claim_run_folder(out, resume=False)
    run = checkpoint.claim_run_folder(tmp_path / "run", resume=False)
    assert run.is_dir() and not any(run.iterdir())  # the probe file is gone
    (run / "metrics.json").write_text("{}")
    with pytest.raises(CheckpointError, match="already holds a run .*metrics.json.*--resume"):
        checkpoint.claim_run_folder(run, resume=False)
    assert checkpoint.claim_run_folder(run, resume=True) == run


def test_no_script_writes_into_a_finished_run_without_resume(sample, tmp_path):
    root, _ = sample
    out = tmp_path / "finished"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    before = sorted(out.iterdir())
    scripts = [("task1_2_finetune/train.py", *small(root, out)),
               ("task3_crop/train.py", *small(root, out)),
               ("task4_dcgan/train.py", *small(root, out)),
               ("task5_vit/train.py", *small(root, out)),
               ("task6_heatmap/train.py", *small(root, out)),
               ("task7_fgsm/train.py", *small(root, out, "--evaluate", str(out / "best.pt"))),
               ("task7_fgsm/train.py", *small(root, out)),
               ("task8_simclr/train.py", *small(root, out)),
               ("task3_crop/detect.py", "--dataset", "dog", "--data-root", str(root),
                "--out", str(out))]
    for script in scripts:
        result = run_cli(*script)
        assert result.returncode != 0
        assert "already holds a run" in result.stderr.strip().splitlines()[-1], script[0]
    assert sorted(out.iterdir()) == before and (out / "metrics.json").read_text() == "{}"


# ------------------------------------------------------------------------ command lines

SCRIPTS = ["task1_2_finetune/train.py", "task3_crop/train.py", "task3_crop/detect.py",
           "task4_dcgan/train.py", "task5_vit/train.py", "task6_heatmap/train.py",
           "task7_fgsm/train.py", "task8_simclr/train.py"]


@pytest.mark.parametrize("flags", [("--image-size", "0"), ("--batch-size", "0"), ("--lr", "-1"),
                                   ("--limit", "-1"), ("--epochs", "0"), ("--workers", "-2"),
                                   ("--val-fraction", "1")])
def test_bad_values_are_one_line_naming_the_flag(flags):
    result = run_cli("task1_2_finetune/train.py", *flags)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"train.py: error: argument {flags[0]}: expected")


def test_bad_task_values_are_refused(tmp_path):
    for script, flags in (("task4_dcgan/train.py", ("--gan-epochs", "0")),
                          ("task7_fgsm/train.py", ("--adv-prob", "1.5")),
                          ("task8_simclr/train.py", ("--label-fractions", "0")),
                          ("task3_crop/detect.py", ("--batch-size", "0"))):
        result = run_cli(script, *flags)
        assert result.returncode == 2 and f"argument {flags[0]}: expected" in result.stderr


def test_help_shows_every_default_without_loading_torch():
    for script in SCRIPTS:
        probe = (f"import runpy, sys; sys.argv = [{script!r}, '--help']\n"
                 f"try:\n    runpy.run_path({script!r}, run_name='__main__')\n"
                 "except SystemExit:\n    pass\n"
                 "print('TORCH' if 'torch' in sys.modules else 'LIGHT')")
        result = run_cli("-c", probe)
        assert result.returncode == 0, result.stderr
        out = " ".join(result.stdout.split())  # argparse wraps lines anywhere
        assert out.endswith("LIGHT"), script
        assert "(default: bird)" in out and "(default: 0)" in out, script  # --seed
    strong = " ".join(run_cli("task1_2_finetune/train.py", "--recipe", "strong",
                              "--help").stdout.split())
    assert "(default: 448)" in strong and "(default: 0.0002)" in strong
    detect = " ".join(run_cli("task3_crop/detect.py", "--help").stdout.split())
    for ignored in ("--hflip", "--crop-scale", "--resize-mode", "--grayscale", "--image-size "):
        assert ignored not in detect
    assert "--image-scale" in detect and "small (224, 224)" in detect


def test_weights_that_contradict_the_run_name_are_refused():
    from task1_2_finetune.train import parse_args as finetune_args
    from task8_simclr.train import parse_args as simclr_args

    with pytest.raises(SystemExit):
        finetune_args(["--variant", "pretrained", "--weights", "none"])
    with pytest.raises(SystemExit):
        finetune_args(["--variant", "baseline", "--weights", "imagenet"])
    assert finetune_args(["--variant", "baseline"]).weights == "none"
    assert finetune_args([]).weights == "imagenet"
    # SimCLR pre-trains from random weights unless told otherwise
    assert simclr_args(["--backbone", "simclr"]).weights == "none"
    assert simclr_args(["--backbone", "simclr", "--weights", "imagenet"]).weights == "imagenet"
    assert simclr_args(["--backbone", "imagenet"]).weights == "imagenet"
    with pytest.raises(SystemExit):
        simclr_args(["--backbone", "random", "--weights", "imagenet"])


def test_the_gan_sizes_of_the_flag_are_the_dcgan_s():
    import dcgan

    from task4_dcgan import train as dcgan_train

    assert dcgan_train.GAN_SIZES == dcgan.SIZES
