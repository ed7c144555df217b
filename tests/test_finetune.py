"""The training engine through task 1-2's script: CPU, generated data, small images."""

import json
import math

import pytest
import torch
from conftest import assert_predictions_reproduce, run_cli
from torch.overrides import TorchFunctionMode

from shared import checkpoint, data, engine, models, results
from shared.errors import CheckpointError, TrainingError
from task1_2_finetune import train as finetune


def small_args(root, out, *extra):
    return finetune.parse_args([
        "--dataset", "bird", "--data-root", str(root), "--out", str(out), "--model", "resnet18",
        "--variant", "baseline", "--image-size", "32", "--batch-size", "8", "--epochs", "2",
        "--val-fraction", "0.25", "--workers", "0", "--device", "cpu", *extra])


def test_one_epoch_lowers_the_training_loss(tmp_path):
    from shared.sample_data import write_sample_data

    write_sample_data(tmp_path / "data", classes=4, per_class=24, size=48, seed=1)
    args = small_args(tmp_path / "data", tmp_path / "run", "--model", "vit_tiny", "--epochs", "1",
                      "--optimizer", "adamw", "--lr", "0.002", "--scheduler", "constant",
                      "--val-fraction", "0", "--hflip", "0", "--grayscale", "0")
    rt = engine.init_runtime(args.device, args.amp, args.seed)
    index, train, val, test = data.prepare_splits("bird", tmp_path / "data", args.val_fraction)
    model, model_spec = models.build_model("vit_tiny", 4, "none", 32)
    cfg = engine.TrainConfig.from_flags(vars(args))
    loaders = data.make_loaders(train, val, test, cfg.loader)
    assert loaders.train.dataset.need == ("long", 32)  # JPEGs larger than 64 px decode smaller
    fixed = data.make_loader(loaders.train.dataset, 8, train=False)  # no augmentation
    before = engine.evaluate(model, model_spec, fixed, rt, False)["loss"]
    engine.fit(model, model_spec, loaders, cfg, rt)
    after = engine.evaluate(model, model_spec, fixed, rt, False)["loss"]
    assert after < before - 0.02


def test_metrics_json_tensorboard_and_table(sample, tmp_path):
    root, written = sample
    out = tmp_path / "results" / "task1_2_finetune" / "bird" / "baseline"
    result = run_cli("task1_2_finetune/train.py", "--dataset", "bird", "--data-root", str(root),
                     "--variant", "baseline", "--model", "resnet18", "--image-size", "32",
                     "--batch-size", "8", "--epochs", "2", "--val-fraction", "0.25",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr
    record = json.loads((out / "metrics.json").read_text())
    assert record["task"] == "task1_2_finetune" and record["variant"] == "baseline"
    assert record["dataset"] == "bird" and record["model"] == "resnet18"
    assert record["weights"] == "none"
    metrics = record["metrics"]
    for key in ("test_top1", "test_top5", "best_val_top1"):
        assert 0 <= metrics[key] <= 1
    assert metrics["test_top5"] >= metrics["test_top1"]
    assert metrics["best_epoch"] in (1, 2)
    assert [h["epoch"] for h in record["history"]] == [1, 2]
    assert set(record["history"][0]) == {"epoch", "train_loss", "train_top1", "val_top1", "lr"}
    assert max(h["val_top1"] for h in record["history"]) == metrics["best_val_top1"]
    images = written["bird"]["images"]
    n_train = sum(im["train"] for im in images)
    assert record["data"] == {"classes": 4, "train": n_train - 4, "val": 4,
                              "test": len(images) - n_train,
                              "test_evaluated": len(images) - n_train}
    assert set(record["env"]) >= {"torch", "device", "world_size", "git"}
    assert record["env"]["world_size"] == 1
    assert set(record["timing"]) == {"train_seconds", "train_images_per_s", "peak_mem_mb"}
    assert record["args"]["epochs"] == 2

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(out / "tb"))
    events.Reload()
    assert {"train/loss", "train/top1", "val/top1", "lr"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("train/loss")] == [1, 2]

    tables = run_cli("-m", "shared.results", str(tmp_path / "results"))
    assert tables.returncode == 0, tables.stderr
    table = (tmp_path / "results" / "TABLES.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| resnet18"))
    assert "CUB-200-2011" in row and "baseline" in row
    assert f"| {100 * metrics['test_top1']:.1f} (" in row  # with its interval
    record = assert_predictions_reproduce(out)
    assert record["predictions"] == {"test_top1": "test_predictions.npz",
                                     "test_top5": "test_predictions.npz"}
    assert 0 <= record["metrics"]["test_ece"] <= 1
    per_class = (out / "per_class.csv").read_text().splitlines()
    assert per_class[0].startswith("class,test_images,correct") and len(per_class) == 1 + 4
    assert (out / "confusion_matrix.png").is_file() and (out / "confusions.png").is_file()


class Killed(Exception):
    pass


def test_resume_after_a_kill_equals_an_uninterrupted_run(sample, tmp_path, monkeypatch):
    root, _ = sample
    # lite0 has dropout (the RNG state must resume too); cosine + warmup schedule; RRC.
    # The kill falls between the head-only epoch and fine-tuning.
    extra = ["--model", "tf_efficientnet_lite0", "--scheduler", "cosine", "--warmup-epochs",
             "0.5", "--label-smoothing", "0.1", "--resize-mode", "random-resized-crop",
             "--optimizer", "adamw", "--lr", "0.001", "--head-only-epochs", "1"]
    finetune.main(small_args(root, tmp_path / "whole", *extra))

    real_save = checkpoint.save_atomic

    def save_then_die(obj, path):
        real_save(obj, path)
        if path.name == "last.pt":
            raise Killed  # killed right after epoch 1 was checkpointed

    monkeypatch.setattr(checkpoint, "save_atomic", save_then_die)
    with pytest.raises(Killed):
        finetune.main(small_args(root, tmp_path / "cut", *extra))
    monkeypatch.setattr(checkpoint, "save_atomic", real_save)
    assert not (tmp_path / "cut" / "metrics.json").exists()
    finetune.main(small_args(root, tmp_path / "cut", *extra, "--resume"))

    whole, cut = (json.loads((tmp_path / n / "metrics.json").read_text())
                  for n in ("whole", "cut"))
    assert cut["history"] == whole["history"]
    assert cut["metrics"] == whole["metrics"]
    a, b = (checkpoint.load(tmp_path / n / "last.pt")["parts"]["model"]
            for n in ("whole", "cut"))
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_run_folder_is_not_overwritten_without_resume(sample, tmp_path):
    root, _ = sample
    finetune.main(small_args(root, tmp_path / "run", "--epochs", "1"))
    with pytest.raises(CheckpointError, match="already holds a run"):
        finetune.main(small_args(root, tmp_path / "run", "--epochs", "1"))


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(sample, tmp_path,
                                                                  monkeypatch):
    root, _ = sample
    real_build = models.build_model
    calls = {"train": 0}

    def build_with_a_fault(*args, **kwargs):
        model, model_spec = real_build(*args, **kwargs)

        def poison(module, inputs, output):
            if module.training:
                calls["train"] += 1
                if calls["train"] == 3:  # epoch 2 (2 steps an epoch), step 1
                    return output * float("nan")
            return output

        model.register_forward_hook(poison)
        return model, model_spec

    monkeypatch.setattr(models, "build_model", build_with_a_fault)
    with pytest.raises(TrainingError, match=r"non-finite loss \(nan\) at epoch 2, step 1"):
        finetune.main(small_args(root, tmp_path / "run", "--epochs", "3"))
    last = checkpoint.load(tmp_path / "run" / "last.pt")
    assert last["values"]["epoch"] == 1
    assert all(torch.isfinite(v).all() for v in last["parts"]["model"].values()
               if v.is_floating_point())
    assert not (tmp_path / "run" / "metrics.json").exists()


def _changed_by_one_epoch(root, tmp_path, *flags) -> set[str]:
    """Train resnet18 one epoch with `flags`; the state-dict keys whose values changed."""
    args = small_args(root, tmp_path / "run", "--epochs", "1", *flags)
    rt = engine.init_runtime(args.device, args.amp, args.seed)
    index, train, val, test = data.prepare_splits("bird", root, args.val_fraction)
    model, model_spec = models.build_model("resnet18", 4, "none")
    frozen = models.freeze_stages(model, model_spec, args.freeze_stages)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = engine.TrainConfig.from_flags(vars(args))
    engine.fit(model, model_spec, data.make_loaders(train, val, test, cfg.loader), cfg, rt,
               frozen=frozen)
    return {k for k, v in model.state_dict().items() if not torch.equal(before[k], v)}


def test_frozen_stages_and_their_batch_norm_do_not_change(sample, tmp_path):
    changed = _changed_by_one_epoch(sample[0], tmp_path, "--freeze-stages", "2")
    assert not {k for k in changed if k.startswith(("conv1.", "bn1.", "layer1."))}
    assert {"layer2.0.conv1.weight", "layer2.0.bn1.running_mean"} <= changed


def test_head_only_epochs_train_the_head_alone(sample, tmp_path):
    changed = _changed_by_one_epoch(sample[0], tmp_path, "--head-only-epochs", "1")
    assert changed == {"fc.weight", "fc.bias"}  # batch norm statistics included


def test_frozen_batch_norm_keeps_its_statistics_but_learns_its_affine(sample, tmp_path):
    changed = _changed_by_one_epoch(sample[0], tmp_path, "--freeze-bn")
    assert not {k for k in changed if "running_" in k or "num_batches" in k}
    assert {"bn1.weight", "layer4.1.bn2.bias", "conv1.weight"} <= changed


def test_a_bad_flag_value_is_one_readable_line(sample, tmp_path):
    root, _ = sample
    result = run_cli("task1_2_finetune/train.py", "--dataset", "bird", "--data-root", str(root),
                     "--model", "resnet18", "--variant", "baseline", "--freeze-stages", "9",
                     "--out", str(tmp_path / "run"))
    assert result.returncode != 0
    assert result.stderr == "error: --freeze-stages must be in -5..5 for resnet18 (5 stages)\n"


def test_two_process_gloo_run_counts_every_test_image_once(sample, tmp_path):
    root, _ = sample
    out = tmp_path / "ddp"
    result = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                     "task1_2_finetune/train.py", "--dataset", "dog", "--data-root", str(root),
                     "--model", "resnet18", "--variant", "baseline", "--image-size", "32",
                     "--batch-size", "8", "--epochs", "1", "--val-fraction", "0.25",
                     "--limit", "19", "--workers", "0", "--device", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    record = assert_predictions_reproduce(out)
    assert record["env"]["world_size"] == 2
    assert record["data"]["test"] == 19  # odd: a padding sampler would count 20
    assert record["data"]["test_evaluated"] == 19
    # every test image once, in the dataset's order, gathered from both processes
    saved = results.load_predictions(out / "test_predictions.npz")
    index = data.load_dataset("dog", root)
    test = data.limit_per_split(index.test, 19, 0)
    assert saved["index"].tolist() == [r.image_id for r in test]
    assert saved["label"].tolist() == [r.label for r in test]


def test_learning_rate_schedules():
    schedule = engine.Schedule(epochs=3, steps_per_epoch=10, scheduler="cosine",
                               warmup_epochs=1.0, step_size=1, gamma=0.1)
    factors = [schedule.factor(s) for s in range(30)]
    assert factors[0] == pytest.approx(0.1) and factors[9] == pytest.approx(1.0)
    assert factors[10] == pytest.approx(1.0)
    assert factors[20] == pytest.approx(0.5 * (1 + math.cos(math.pi * 10 / 20)))
    assert all(a >= b for a, b in zip(factors[10:], factors[11:], strict=False))
    schedule = engine.Schedule(3, 10, "step", 0, step_size=1, gamma=0.1)
    assert [schedule.factor(s) for s in (0, 9, 10, 25)] == pytest.approx([1, 1, 0.1, 0.01])


class HostReads(TorchFunctionMode):
    """Counts the calls that bring a tensor's value to the host or a host value to a tensor:
    on a GPU each waits for the work queued so far, and a loop that makes one every step
    cannot run ahead of the device."""

    NAMES = {"item", "tolist", "cpu", "numpy", "__bool__", "__int__", "__float__",
             "__index__", "tensor", "new_tensor"}

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_function__(self, func, types, args=(), kwargs=None):
        self.count += getattr(func, "__name__", "") in self.NAMES
        return func(*args, **(kwargs or {}))


def test_training_and_evaluation_read_the_device_per_epoch_not_per_step(tmp_path):
    rt = engine.Runtime(torch.device("cpu"))
    model, model_spec = models.build_model("resnet18", 4, "none")
    model.to(memory_format=torch.channels_last)
    optimizer = engine.make_optimizer(model.parameters(), rt.device, "sgd", 0.01)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    generator = torch.Generator().manual_seed(0)

    def batches(count):  # what a loader gives: uint8 pixels and labels
        return [(torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8, generator=generator),
                 torch.randint(0, 4, (4,), generator=generator)) for _ in range(count)]

    def reads(run, steps):
        with HostReads() as counter:
            run(batches(steps))
        return counter.count

    loop = engine.Loop(model, model_spec, optimizer, scheduler, scaler,
                       torch.nn.CrossEntropyLoss(), rt, channels_last=True, clip_grad=0.0,
                       epochs=1, last_path=tmp_path / "x")

    def train(loader):
        engine.train_epoch(loop, model, loader, 0)

    def evaluate(loader):
        engine.evaluate(model, model_spec, loader, rt, True)

    # one finiteness check at the end of the epoch; four numbers read after evaluation. A
    # first epoch makes the normalisation's constants once a process (cached): the count
    # would depend on which tests ran before in this process
    train(batches(1))
    assert reads(train, 2) == reads(train, 12) == 1
    assert reads(evaluate, 1) == reads(evaluate, 5) == 4


def test_evaluation_at_its_own_batch_size_gives_the_predictions_of_a_plain_loop(sample):
    """The engine evaluates under inference_mode at its own batch size in the machine's
    memory format: the same logits, to float rounding, and the same predictions as the
    plainest loop, one image at a time in fp32."""
    root, _ = sample
    rt = engine.init_runtime("cpu", "off")
    index, train, val, test = data.prepare_splits("bird", root, 0.25)
    torch.manual_seed(0)
    model, spec = models.build_model("resnet18", len(index.classes), "none", 32)
    model.eval()
    for module in model.modules():  # running statistics far from 0 / 1, as after training
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.5, 0.5)
            module.running_var.uniform_(0.5, 2.0)
    config = data.LoaderConfig(image_size=32, batch_size=4, eval_batch_size=7)
    loaders = data.make_loaders(train, val, test, config)
    assert loaders.test.batch_size == 7 and len(test) % 7  # a partial last batch too
    channels_last = engine.use_channels_last(None, spec, model, rt.device)
    assert channels_last  # a CNN on every CPU
    model.to(memory_format=torch.channels_last)
    result = engine.evaluate(model, spec, loaders.test, rt, channels_last, outputs=True)
    plain_model = model.to(memory_format=torch.contiguous_format)
    with torch.no_grad():
        plain = torch.cat([plain_model(data.normalize(loaders.test.dataset[i][0][None],
                                                      spec.mean, spec.std))
                           for i in range(len(test))])
    assert result["count"] == len(test)
    torch.testing.assert_close(result["logits"], plain, rtol=1e-4, atol=1e-4)
    assert torch.equal(result["logits"].argmax(1), plain.argmax(1))
    labels = torch.tensor([r.label for r in test])
    assert result["top1"] == pytest.approx((plain.argmax(1) == labels).float().mean().item())


def test_speed_defaults_follow_the_machine_and_the_kind_of_model(monkeypatch):
    built = {name: models.build_model(name, 3, "none", 32)
             for name in ("tf_efficientnet_lite0", "resnet18", "vit_tiny")}
    assert {name: engine.model_kind(*pair) for name, pair in built.items()} == {
        "tf_efficientnet_lite0": "depthwise-cnn", "resnet18": "cnn", "vit_tiny": "transformer"}
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx2", "avx512f", "amx_bf16"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA", raising=False)
    assert engine.machine_kind(cpu) == "cpu-amx"
    assert engine.resolve_amp("auto", cpu) == torch.bfloat16
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")  # AMX hidden from oneDNN: fp32
    assert engine.machine_kind(cpu) == "cpu" and engine.resolve_amp("auto", cpu) is None
    assert engine.resolve_amp("bf16", cpu) == torch.bfloat16  # forced
    monkeypatch.setattr(engine, "cpu_flags", lambda: {"avx2"})
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert engine.machine_kind(cpu) == "cpu" and engine.machine_kind(cuda) == "cuda"
    (vit, vit_spec), (lite, lite_spec) = built["vit_tiny"], built["tf_efficientnet_lite0"]
    assert engine.use_channels_last(None, lite_spec, lite, cpu)
    assert not engine.use_channels_last(None, vit_spec, vit, cpu)
    assert not engine.use_channels_last(False, lite_spec, lite, cpu)  # --no-channels-last
    assert engine.use_channels_last(True, vit_spec, vit, cpu)  # --channels-last


def test_the_test_split_is_scored_with_the_best_epochs_weights(sample, tmp_path):
    """Validation reads best at epoch 1 of 3: the test predictions are those of best.pt's
    weights (loaded here and run on the test photos), not of the last epoch's."""
    root, _ = sample
    rt = engine.init_runtime("cpu", "off")
    index, train, val, test = data.prepare_splits("bird", root, 0.25)
    readings = iter([0.9, 0.2, 0.3])
    cfg = engine.TrainConfig(out=tmp_path / "run", model="resnet18", weights="none", epochs=3,
                             lr=0.05, loader=data.LoaderConfig(image_size=32, batch_size=8))
    engine.train_classifier("task1_2_finetune", "baseline", {"dataset": "bird",
                            "model": "resnet18", "weights": "none"}, cfg, rt, index.classes,
                            train, val, test,
                            validate=lambda loop, loaders, history: {"val_top1": next(readings)})
    record = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert record["metrics"]["best_epoch"] == 1
    saved = results.load_predictions(tmp_path / "run" / "test_predictions.npz")
    loaders = data.make_loaders(train, val, test, cfg.loader)

    def logits_of(file):
        model, spec, _ = models.load_classifier(tmp_path / "run" / file, index.classes)
        with torch.no_grad():
            return torch.cat([model(data.normalize(pixels, spec.mean, spec.std))
                              for pixels, _ in loaders.test])

    best = logits_of("best.pt")
    torch.testing.assert_close(torch.from_numpy(saved["logits"]).float(), best,
                               atol=2e-2, rtol=1e-2)  # float16 in the file
    last_state = checkpoint.load(tmp_path / "run" / "last.pt")["parts"]["model"]
    torch.save({**torch.load(tmp_path / "run" / "best.pt"), "model": last_state},
               tmp_path / "run" / "last-as-best.pt")
    last = logits_of("last-as-best.pt")
    assert not torch.allclose(last, best, atol=2e-2)  # the last epoch's would differ


def test_clip_grad_and_label_smoothing_do_what_they_say(tmp_path):
    """Through the engine's loop (make_loop, as --clip-grad and --label-smoothing build it),
    against hand-worked values: the loss is (1 - e) x cross-entropy + e x the mean over
    classes of -log p; one plain SGD step (lr 1) moves the weights by the gradient, clipped
    to norm 0.1 when it is larger."""
    spec = models.ModelSpec("linear", False, (0.0,) * 3, (1.0,) * 3, head="0.", stages=())
    x = torch.tensor([[1.0, -2.0, 0.5], [0.0, 3.0, -1.0]])
    labels = torch.tensor([0, 2])

    def loop_for(clip, smoothing):
        torch.manual_seed(0)
        net = torch.nn.Sequential(torch.nn.Linear(3, 3))
        cfg = engine.TrainConfig(out=tmp_path, optimizer="sgd", lr=1.0, momentum=0.0,
                                 scheduler="cosine", epochs=100, clip_grad=clip,
                                 label_smoothing=smoothing, channels_last=False)
        loop, _ = engine.make_loop(net, spec, cfg, engine.Runtime(torch.device("cpu")), 1)
        return loop, net

    loop, net = loop_for(0.0, 0.2)
    loss, logits = loop.forward(net, x, labels)
    log_p = logits.detach().log_softmax(1)
    nll, uniform = -log_p[[0, 1], labels], -log_p.mean(1)
    assert loss.item() == pytest.approx((0.8 * nll + 0.2 * uniform).mean().item())

    for clip in (0.0, 0.1):
        loop, net = loop_for(clip, 0.0)
        before = [p.detach().clone() for p in net.parameters()]
        loss, _ = loop.forward(net, x, labels)
        raw = torch.autograd.grad(loss, list(net.parameters()), retain_graph=True)
        loop.update(loss)
        moved = torch.cat([(b - p.detach()).flatten()
                           for b, p in zip(before, net.parameters(), strict=True)])
        gradient = torch.cat([g.flatten() for g in raw])
        assert gradient.norm() > 0.5  # larger than the clip
        expected = gradient if clip == 0 else gradient * clip / gradient.norm()
        torch.testing.assert_close(moved, expected, atol=1e-5, rtol=1e-4)
