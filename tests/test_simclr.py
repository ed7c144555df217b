"""Task 8: the hand-written NT-Xent loss, views and head; SimCLR pre-training, the linear
probe, kNN, label subsets, the DDP gather, and the pipeline from the command line."""

import json
import math

import pretrain
import probes
import pytest
import torch
import torch.multiprocessing as mp
from conftest import assert_predictions_reproduce, run_cli
from PIL import Image
from simclr import LARS, ProjectionHead, lars_groups, nt_xent, simclr_augment, simclr_views
from torch import nn

from shared import errors
from shared.engine import Runtime
from shared.results import write_tables
from task8_simclr import train as simclr_train


def slow_nt_xent(z1: torch.Tensor, z2: torch.Tensor, tau: float) -> float:
    """The loss with explicit loops over every anchor and candidate."""
    z = torch.cat([z1, z2]).double()
    z = [v / v.norm() for v in z]
    n = len(z1)
    total = 0.0
    for i in range(2 * n):
        positive = (i + n) % (2 * n)
        denominator = sum(math.exp(float(z[i] @ z[k]) / tau) for k in range(2 * n) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[positive]) / tau) / denominator)
    return total / (2 * n)


@pytest.mark.parametrize("tau", [0.1, 0.5])
def test_nt_xent_equals_a_slow_reference(tau):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(6, 8, generator=g), torch.randn(6, 8, generator=g)
    loss, _ = nt_xent(z1, z2, tau)
    assert loss.item() == pytest.approx(slow_nt_xent(z1, z2, tau), abs=1e-5)


def test_nt_xent_is_symmetric_scale_free_and_prefers_aligned_pairs():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    loss = nt_xent(z1, z2)[0]
    assert nt_xent(z2, z1)[0].item() == pytest.approx(loss.item(), abs=1e-6)
    assert nt_xent(3 * z1, 0.2 * z2)[0].item() == pytest.approx(loss.item(), abs=1e-5)
    aligned = z1 + 0.1 * torch.randn(16, 32, generator=g)
    loss_aligned, accuracy = nt_xent(z1, aligned)
    loss_shuffled, _ = nt_xent(z1, aligned[torch.randperm(16, generator=g)])
    assert loss_aligned < loss_shuffled and accuracy == 1.0


def test_gradients_reach_both_views():
    z1 = torch.randn(8, 16, requires_grad=True)
    z2 = torch.randn(8, 16, requires_grad=True)
    nt_xent(z1, z2)[0].backward()
    assert z1.grad.abs().sum() > 0 and z2.grad.abs().sum() > 0


def test_views_differ_and_the_head_projects():
    torch.manual_seed(0)
    image = Image.fromarray((torch.rand(64, 48, 3) * 255).byte().numpy())
    a, b = simclr_views(32)(image)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    assert a.dtype == torch.uint8  # normalised on the device
    assert ProjectionHead(512, 64, 16)(torch.randn(4, 512)).shape == (4, 16)


# ------------------------------------------------------------------- pre-training, evaluation


def test_one_pretraining_step_lowers_the_loss_on_a_fixed_batch():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 16, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                        ProjectionHead(16, 32, 8))
    view1 = torch.rand(16, 3, 12, 12)
    view2 = (view1 + 0.1 * torch.randn_like(view1)).clamp(0, 1)
    optimizer = torch.optim.AdamW(net.parameters(), 1e-2)
    rt = Runtime(torch.device("cpu"))
    before, accuracy = pretrain.simclr_step(net, torch.cat([view1, view2]), optimizer, 0.5, rt)
    with torch.no_grad():
        after, _ = nt_xent(net(view1), net(view2))  # the same batch, after task 8's step
    assert after < before - 1e-3 and 0 <= accuracy <= 1  # down: a step that climbs fails


def test_linear_probe_and_knn_leave_the_backbone_bitwise_unchanged(sample):
    root, _ = sample
    from shared import data, engine
    from shared.models import build_model

    backbone, model_spec = build_model("resnet18", 4, "none", 32)
    features = pretrain.split_head(backbone, model_spec)
    assert features == 512 and isinstance(backbone.fc, nn.Identity)
    backbone.train()  # the probe must switch batch norm to eval itself
    before = {k: v.clone() for k, v in backbone.state_dict().items()}
    index = data.load_dataset("bird", root)
    transform = data.build_transform(False, 32)
    need = data.decode_need(False, 32)
    rt = engine.Runtime(torch.device("cpu"))
    train_x, train_y = probes.extract(backbone, model_spec, index.train, transform, need,
                                            rt, workers=0)
    test_x, test_y = probes.extract(backbone, model_spec, index.test, transform, need, rt,
                                          workers=0)
    assert train_x.shape == (len(index.train), 512)
    linear = probes.linear_probe(train_x, train_y, 4, 20, 0)(test_x)
    knn = probes.knn_scores(train_x, train_y, test_x, 4, 5)
    assert linear.shape == knn.shape == (len(test_y), 4)
    assert all(torch.equal(before[k], v) for k, v in backbone.state_dict().items())
    # kNN on features equal to one-hot labels is perfect, and a class without votes scores
    # -inf
    onehot = torch.eye(4)[train_y]
    knn = probes.knn_scores(onehot, train_y, onehot, 4, 3)
    assert torch.equal(knn.argmax(1), train_y) and torch.isinf(knn).any()


def test_label_subsets_are_class_balanced_seeded_and_never_empty(sample):
    root, _ = sample
    from shared import data

    train = data.load_dataset("dog", root).train
    subset = probes.label_subset(train, 0.01, seed=0)
    assert sorted(r.label for r in subset) == [0, 1, 2, 3]  # one of each class
    half = probes.label_subset(train, 0.5, seed=0)
    assert half == probes.label_subset(train, 0.5, seed=0)
    assert half != probes.label_subset(train, 0.5, seed=1)
    assert probes.label_subset(train, 1.0, seed=0).__len__() == len(train)


def _gathered_loss(rank, world, init_file, z1, z2, results):
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}",
                                         rank=rank, world_size=world)
    half = len(z1) // world
    mine = slice(rank * half, (rank + 1) * half)
    local1, local2 = z1[mine].clone().requires_grad_(), z2[mine].clone().requires_grad_()
    loss, _ = nt_xent(pretrain.gather(local1), pretrain.gather(local2))
    loss.backward()
    results[rank] = (loss.item(), local1.grad.clone())
    torch.distributed.destroy_process_group()


def test_ddp_gather_gives_the_whole_batch_loss(tmp_path):
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(8, 6, generator=g), torch.randn(8, 6, generator=g)
    whole1 = z1.clone().requires_grad_()
    loss, _ = nt_xent(whole1, z2)
    loss.backward()
    manager = mp.Manager()
    results = manager.dict()
    mp.spawn(_gathered_loss, args=(2, tmp_path / "init", z1, z2, results), nprocs=2)
    for rank in range(2):
        assert results[rank][0] == pytest.approx(loss.item(), abs=1e-6)
        # each process's gradient is the whole batch's, times the 2 processes that each
        # back-propagate the same loss (DDP then averages over them)
        torch.testing.assert_close(results[rank][1] / 2, whole1.grad[rank * 4:(rank + 1) * 4])


def test_pipeline_from_the_command_line(sample, tmp_path):
    root, _ = sample
    out = tmp_path / "results" / "task8_simclr" / "bird" / "simclr"
    result = run_cli("task8_simclr/train.py", "--dataset", "bird", "--data-root", str(root),
                     "--model", "resnet18", "--weights", "none", "--image-size", "32",
                     "--simclr-epochs", "2", "--simclr-batch-size", "8",
                     "--simclr-optimizer", "sgd", "--simclr-lr", "0.05",
                     "--label-fractions", "0.5", "1", "--epochs", "1", "--batch-size", "8",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "pretrain.pt").is_file() and (out / "backbone.pt").is_file()
    assert list((out / "tb").glob("events.out.tfevents.*"))
    for fraction in ("0.5", "1"):
        metrics = json.loads((out / f"fraction-{fraction}" / "metrics.json").read_text())
        assert metrics["metrics"]["label_budget"] == f"{100 * float(fraction):g}%"
        assert metrics["metrics"]["label_fraction"] == pytest.approx(
            metrics["data"]["train_labelled"] / metrics["data"]["train"])
        for key in ("linear_top1", "knn_top1", "finetune_top1"):
            assert 0 <= metrics["metrics"][key] <= 1
        assert assert_predictions_reproduce(out / f"fraction-{fraction}")["predictions"] == {
            "linear_top1": "linear_predictions.npz", "knn_top1": "knn_predictions.npz",
            "finetune_top1": "finetune/test_predictions.npz"}
        # the gates: SimCLR's kNN against random features; the LP-FT fine-tune against its
        # probe on validation, judging the fine-tune's verdict only
        knn, tuned = metrics["gates"]
        assert knn["name"].startswith("val kNN above random-init") and "judges" not in knn
        finetune = json.loads((out / f"fraction-{fraction}" / "finetune" / "metrics.json"
                               ).read_text())
        assert finetune["weights"].endswith(f"fraction-{fraction}/probe_start.pt")
        assert tuned["judges"] == ["finetune_top1"] and tuned["value"] == pytest.approx(
            100 * (finetune["metrics"]["best_val_top1"] - metrics["metrics"]["linear_val_top1"]))
    table = write_tables(tmp_path / "results").read_text().split("## Table 7")[1]
    assert table.count("| SimCLR (from random) |") == 2


def test_lp_ft_starts_where_the_probe_ends_on_the_same_view(sample, tmp_path):
    """A fine-tune that does not move (lr 1e-12, batch norm frozen) must read validation as
    its probe does: both see each photo through the run's --crop-ratio (the probe once read
    the default 0.875 crop while the strong recipe's fine-tune read the whole photo, 1.0,
    and the gate compared two views)."""
    root, _ = sample
    out = tmp_path / "random"
    result = run_cli("task8_simclr/train.py", "--dataset", "bird", "--data-root", str(root),
                     "--backbone", "random", "--model", "resnet18", "--image-size", "32",
                     "--resize-mode", "center-crop", "--crop-ratio", "0.4",
                     "--label-fractions", "1", "--epochs", "1", "--batch-size", "8",
                     "--lr", "1e-12", "--warmup-epochs", "0", "--freeze-bn",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((out / "fraction-1" / "metrics.json").read_text())
    [gate] = metrics["gates"]
    assert gate["value"] == 0 and gate["passed"]


def test_two_processes_probe_the_whole_split_as_one_does(sample, tmp_path):
    root, _ = sample
    common = ["task8_simclr/train.py", "--dataset", "dog", "--data-root", str(root),
              "--model", "resnet18", "--backbone", "random", "--image-size", "32",
              "--label-fractions", "1", "--epochs", "1", "--batch-size", "8", "--workers", "0",
              "--device", "cpu"]
    one = run_cli(*common, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    two = run_cli("-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                  *common, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    scores = [json.loads((tmp_path / run / "fraction-1" / "metrics.json").read_text())["metrics"]
              for run in ("one", "two")]
    # the same seeded random backbone: features of the same images give the same probes
    for key in ("linear_top1", "knn_top1"):
        assert scores[0][key] == pytest.approx(scores[1][key])


def test_pretraining_resumes_to_the_same_weights(sample, tmp_path):
    root, _ = sample
    from shared import checkpoint, data, engine
    from shared.models import build_model

    train = data.load_dataset("bird", root).train

    def run(out, epochs, resume):
        args = simclr_train.parse_args([
            "--model", "resnet18", "--image-size", "32", "--simclr-epochs", str(epochs),
            "--simclr-batch-size", "8", "--simclr-warmup-epochs", "1"]
            + (["--resume"] if resume else []))
        torch.manual_seed(0)
        backbone, model_spec = build_model("resnet18", 4, "none", 32)
        features = pretrain.split_head(backbone, model_spec)
        rt = engine.Runtime(torch.device("cpu"))
        pretrain.pretrain(backbone, features, model_spec, train,
                          pretrain.SimCLRConfig.from_flags(vars(args)), rt, out)
        return checkpoint.load(out / "pretrain.pt")["parts"]["net"]

    whole = run(tmp_path / "whole", 2, False)
    run(tmp_path / "split", 1, False)
    resumed = run(tmp_path / "split", 2, True)  # its RNG comes from the checkpoint
    assert all(torch.equal(whole[k], resumed[k]) for k in whole)


# ------------------------------------------------------------- LARS, budgets, the monitor


def test_lars_steps_by_the_trust_ratio_and_leaves_norms_and_biases_plain():
    g = torch.Generator().manual_seed(0)
    layer = nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(2, 3, generator=g))
        layer.bias.copy_(torch.randn(2, generator=g))
    groups = lars_groups(layer)
    assert groups[0]["params"] == [layer.weight] and groups[1]["params"] == [layer.bias]
    lr, wd, eta, momentum = 0.5, 0.01, 0.001, 0.9
    optimizer = LARS(groups, lr, momentum=momentum, weight_decay=wd, eta=eta)
    w, b = layer.weight.detach().clone(), layer.bias.detach().clone()
    velocity_w, velocity_b = torch.zeros_like(w), torch.zeros_like(b)
    for _ in range(2):  # the second step carries the first one's momentum
        grad_w, grad_b = torch.randn(2, 3, generator=g), torch.randn(2, generator=g)
        layer.weight.grad, layer.bias.grad = grad_w.clone(), grad_b.clone()
        optimizer.step()
        # by hand: the weight's step scaled by eta ||w|| / ||g + wd w||, with weight decay
        decayed = grad_w + wd * w
        trust = eta * w.norm() / decayed.norm()
        velocity_w = momentum * velocity_w + lr * trust * decayed
        w = w - velocity_w
        velocity_b = momentum * velocity_b + lr * grad_b  # the bias: no ratio, no decay
        b = b - velocity_b
        torch.testing.assert_close(layer.weight.detach(), w)
        torch.testing.assert_close(layer.bias.detach(), b)
    assert 0 < trust < 0.01  # the ratio did scale the step


def test_lars_trust_ratio_is_one_for_a_zero_weight():
    weight = nn.Parameter(torch.zeros(2, 2))
    weight.grad = torch.ones(2, 2)
    LARS([weight], lr=0.1, momentum=0.0, weight_decay=0.0).step()
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), -0.1))


def test_lars_trust_ratio_for_small_norms_and_a_zero_gradient():
    """Norms below 1 still scale the step: ||w|| = ||g|| = 0.2 gives a trust ratio of eta,
    a step of lr * eta * g = 1e-5; a zero gradient leaves the weight as it is (no 0 / 0)."""
    weight = nn.Parameter(torch.full((2, 2), 0.1))
    weight.grad = torch.full((2, 2), 0.1)
    optimizer = LARS([weight], lr=0.1, momentum=0.0, weight_decay=0.0)
    assert optimizer.step() is None  # no closure, no loss
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), 0.1 - 1e-5))
    weight.grad = torch.zeros(2, 2)
    optimizer.step()
    torch.testing.assert_close(weight.detach(), torch.full((2, 2), 0.1 - 1e-5))


def test_lars_closure_and_missing_gradients():
    """step(closure) returns the closure's loss, computed with gradients even under no_grad;
    a parameter without a gradient is left as it is."""
    used, unused = nn.Parameter(torch.ones(2, 2)), nn.Parameter(torch.ones(2))
    optimizer = LARS([{"params": [used]}, {"params": [unused], "adapt": False}], lr=0.1)

    def closure():
        optimizer.zero_grad()
        loss = (used ** 2).sum()
        loss.backward()
        return loss

    with torch.no_grad():
        assert optimizer.step(closure).item() == 4.0
    assert used.detach().lt(1).all() and torch.equal(unused.detach(), torch.ones(2))


def test_simclr_parts_default_to_the_papers_settings():
    """Chen et al. 2020 (appendix B): LARS with momentum 0.9, weight decay 1e-6, trust
    coefficient 1e-3; a projection head Linear-BN-ReLU-Linear through 2048 units to 128."""
    assert LARS(lars_groups(nn.Linear(4, 2)), lr=0.3).defaults == {
        "lr": 0.3, "momentum": 0.9, "weight_decay": 1e-6, "eta": 1e-3, "adapt": True}
    head = ProjectionHead(512).net
    assert [type(m) for m in head] == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear]
    assert (head[0].in_features, head[0].out_features, head[1].num_features,
            head[3].in_features, head[3].out_features) == (512, 2048, 2048, 2048, 128)


def test_the_augmentation_is_the_papers():
    """Chen et al. 2020, appendix A, at colour strength s = 0.5: crops of 8-100% of the area,
    flips, jitter (0.8 s, 0.8 s, 0.8 s, 0.2 s) with p 0.8, grey with p 0.2, a blur whose
    kernel is a tenth of the image (odd) with sigma 0.1-2 and p 0.5; no blur when asked."""
    from torchvision import transforms as T

    crop, flip, jitter, grey, blur, to_tensor = simclr_augment(96).transforms
    assert (crop.size, crop.scale, crop.ratio) == ((96, 96), (0.08, 1.0), (3 / 4, 4 / 3))
    assert isinstance(flip, T.RandomHorizontalFlip) and flip.p == 0.5
    (colour,) = jitter.transforms
    assert jitter.p == 0.8 and (colour.brightness, colour.contrast, colour.saturation,
                                colour.hue) == ((0.6, 1.4), (0.6, 1.4), (0.6, 1.4), (-0.1, 0.1))
    assert isinstance(grey, T.RandomGrayscale) and grey.p == 0.2
    (gaussian,) = blur.transforms
    assert blur.p == 0.5 and gaussian.kernel_size == (9, 9) and gaussian.sigma == (0.1, 2.0)
    assert isinstance(to_tensor, T.PILToTensor)
    assert simclr_augment(32).transforms[4].transforms[0].kernel_size == (3, 3)  # at least 3
    assert simclr_augment(224).transforms[4].transforms[0].kernel_size == (23, 23)
    assert len(simclr_augment(96, blur=False).transforms) == 5


def test_views_blur_by_default_and_pass_the_choice_on(monkeypatch):
    """simclr_views builds both views with simclr_augment, blurring unless told not to (the
    paper's augmentation; pre-training calls it with the default)."""
    import simclr

    asked = []
    monkeypatch.setattr(simclr, "simclr_augment", lambda size, blur: asked.append(blur))
    simclr.simclr_views(32)
    simclr.simclr_views(32, blur=False)
    assert asked == [True, False]


def test_views_turn_grey_a_fifth_of_the_time():
    """RandomGrayscale(p=0.2): of 600 views of a colourful photo, seeded, between 13% and
    27% grey (a binomial's 4 standard deviations around 20%)."""
    torch.manual_seed(0)
    image = Image.fromarray((torch.rand(40, 40, 3) * 255).byte().numpy())
    views = [v for _ in range(300) for v in simclr_views(32, blur=False)(image)]
    grey = sum(bool(torch.equal(v[0], v[1]) and torch.equal(v[1], v[2])) for v in views)
    assert 0.13 < grey / len(views) < 0.27


def test_per_class_budgets_give_exactly_that_many_photos_a_class(sample):
    root, _ = sample
    from shared import data

    train = data.load_dataset("dog", root).train
    for count in (1, 3):
        subset = probes.label_subset(train, f"{count}/class", seed=0)
        per_class = {label: sum(r.label == label for r in subset) for label in range(4)}
        assert per_class == {label: count for label in range(4)}
    with pytest.raises(errors.DataError, match="--label-fractions 99/class: class 0 has only"):
        probes.label_subset(train, "99/class", seed=0)
    args = simclr_train.parse_args(["--label-fractions", "1/class", "0.1", "1"])
    assert args.label_fractions == ["1/class", 0.1, 1.0]
    for bad in ("0/class", "2/image", "1.5"):
        with pytest.raises(SystemExit):
            simclr_train.parse_args(["--label-fractions", bad])


def test_lr_defaults_follow_each_optimiser_and_imagenet_simclr_is_its_own_row():
    lars = simclr_train.parse_args(["--simclr-optimizer", "lars", "--simclr-batch-size", "64"])
    assert lars.simclr_lr == pytest.approx(0.075 * 8)  # square-root scaling
    assert simclr_train.parse_args(["--simclr-optimizer", "sgd"]).simclr_lr == pytest.approx(0.3)
    assert simclr_train.parse_args(["--simclr-lr", "0.2"]).simclr_lr == 0.2
    both = simclr_train.parse_args(["--dataset", "bird", "--weights", "imagenet"])
    assert both.variant == "imagenet-simclr" and both.out.name == "imagenet-simclr"
    assert simclr_train.parse_args(["--dataset", "bird"]).variant == "simclr"


def test_fine_tunes_default_to_the_lp_ft_recipe_and_flags_still_win():
    """Task 8's fine-tunes start from the probe: by default unfrozen, batch norm frozen, no
    head-only epochs or label smoothing, a backbone lr well below the head's (the seed's
    SGD at lr 0.01 took the demo's fine-tunes to chance)."""
    lp_ft = simclr_train.parse_args([])
    assert (lp_ft.recipe, lp_ft.lr, lp_ft.label_smoothing) == ("lp-ft", 3e-5, 0.0)
    assert (lp_ft.freeze_stages, lp_ft.head_only_epochs, lp_ft.freeze_bn) == (0, 0, True)
    assert lp_ft.lr * lp_ft.head_lr_mult <= 1e-3
    assert simclr_train.parse_args(["--lr", "1e-4"]).lr == 1e-4
    seed = simclr_train.parse_args(["--recipe", "seed"])
    assert (seed.optimizer, seed.lr) == ("sgd", 0.01)


def test_the_knn_monitor_scores_as_the_final_knn_evaluation(sample, tmp_path):
    root, _ = sample
    from shared import data, engine
    from shared.models import build_model

    out = tmp_path / "simclr"
    flags = ["--dataset", "bird", "--data-root", str(root), "--model", "resnet18",
             "--weights", "none", "--image-size", "32", "--simclr-epochs", "2",
             "--simclr-batch-size", "8", "--simclr-optimizer", "lars", "--knn-every", "1",
             "--label-fractions", "1", "--epochs", "1", "--batch-size", "8", "--workers", "0"]
    result = run_cli("task8_simclr/train.py", *flags, "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "fraction-1" / "metrics.json").read_text())
    history = record["pretrain_history"]
    assert [h["epoch"] for h in history] == [0, 1, 2]  # epoch 0: the starting weights
    assert all(0 <= h["val_knn_top1"] <= 1 for h in history)
    assert list((out / "tb").glob("events.out.tfevents.*"))
    # the gate's curve: at epoch 0 the network is the gate's random one (the same seed), at
    # the end the gate's own value
    assert history[0]["val_knn_gate_p"] == 1.0
    assert history[-1]["val_knn_gate_p"] == record["gates"][0]["value"]
    # the monitor's function, pointed at the test split with every training label, is the
    # final evaluation's kNN at 100% of the labels
    args = simclr_train.parse_args(flags)
    index, train, _, test = data.prepare_splits("bird", root, args.val_fraction, args.seed)
    backbone, spec = build_model("resnet18", len(index.classes), str(out / "backbone.pt"), 32)
    pretrain.split_head(backbone, spec)
    rt = engine.Runtime(torch.device("cpu"))
    view = (data.build_transform(False, 32, args.resize_mode, crop_ratio=args.crop_ratio),
            data.decode_need(False, 32, args.resize_mode, crop_ratio=args.crop_ratio))
    again = probes.knn_monitor(backbone, spec, train, test, len(index.classes), args.knn,
                               view, args.workers, rt)
    assert again == {"val_knn_top1": record["metrics"]["knn_top1"]}


def _pretraining_start(root, out, monkeypatch, model: str, weights: str) -> dict:
    """Task 8 on the sample data with pre-training replaced by a stand-in that keeps the
    weights it is handed: those weights."""
    started = {}

    def first_state(backbone, *args, **kwargs):  # stands in for pre-training: what it gets
        started.update({k: v.clone() for k, v in backbone.state_dict().items()})
        return []

    monkeypatch.setattr(pretrain, "pretrain", first_state)
    simclr_train.main(simclr_train.parse_args([
        "--dataset", "bird", "--data-root", str(root), "--model", model,
        "--weights", weights, "--image-size", "32", "--label-fractions", "1",
        "--epochs", "1", "--batch-size", "8", "--probe-epochs", "2", "--out", str(out)]))
    return started


def test_pretraining_from_imagenet_starts_from_imagenet_weights(sample, tmp_path,
                                                                monkeypatch):
    root, _ = sample
    from shared.models import build_model

    started = _pretraining_start(root, tmp_path / "imagenet-simclr", monkeypatch,
                                 "tf_efficientnet_lite0", "imagenet")
    imagenet, spec = build_model("tf_efficientnet_lite0", 4, "imagenet", 32)
    pretrain.split_head(imagenet, spec)
    assert started.keys() == imagenet.state_dict().keys()
    assert all(torch.equal(started[k], v) for k, v in imagenet.state_dict().items())


def test_the_knn_gate_compares_with_the_network_pre_training_starts_from(sample, tmp_path,
                                                                        monkeypatch):
    """SimCLR from random: the gate's random network (and so the monitor's gate curve, p 1
    at epoch 0) is the very network pre-training starts from, not another draw."""
    root, _ = sample
    from shared import models

    build_model, built = models.build_model, []

    def recording(*args, **kwargs):
        model, spec = build_model(*args, **kwargs)
        built.append({k: v.clone() for k, v in model.state_dict().items()})
        return model, spec

    monkeypatch.setattr(models, "build_model", recording)
    started = _pretraining_start(root, tmp_path / "simclr", monkeypatch, "resnet18", "none")
    reference = built[1]  # the second network built: the gate's
    assert started and all(torch.equal(reference[k], v) for k, v in started.items())


def test_running_out_of_memory_names_the_flags(sample, tmp_path, monkeypatch):
    root, _ = sample
    from shared import data, engine
    from shared.models import build_model

    def refused(*args, **kwargs):
        raise RuntimeError("DefaultCPUAllocator: can't allocate memory: you tried to "
                           "allocate 53687091200 bytes")

    monkeypatch.setattr(pretrain, "nt_xent", refused)
    args = simclr_train.parse_args(["--model", "resnet18", "--image-size", "32",
                                    "--simclr-epochs", "1", "--simclr-batch-size", "8"])
    backbone, spec = build_model("resnet18", 4, "none", 32)
    features = pretrain.split_head(backbone, spec)
    train = data.load_dataset("bird", root).train
    with pytest.raises(errors.TrainingError,
                       match="--simclr-batch-size 8 is 16 views of 32 px a process on cpu"):
        pretrain.pretrain(backbone, features, spec, train,
                          pretrain.SimCLRConfig.from_flags(vars(args)),
                          engine.Runtime(torch.device("cpu")), tmp_path)
    assert not pretrain.out_of_memory(RuntimeError("shape mismatch"))


def test_linear_probe_keeps_a_feature_constant_in_training_on_its_scale():
    """A ReLU feature that never fires on the few labelled photos must not be divided by
    its zero spread: a test photo where it fires would score past float16's range."""
    g = torch.Generator().manual_seed(0)
    train_x, test_x = torch.randn(8, 4, generator=g), torch.randn(3, 4, generator=g)
    train_x[:, 0], test_x[:, 0] = 0.0, 1.0
    logits = probes.linear_probe(train_x, torch.arange(8) % 2, 2, 5, 0)(test_x)
    assert logits.abs().max() < 100


def test_a_unit_nearly_constant_on_the_labelled_photos_gets_no_outsized_weight():
    """The demo's failure: a unit that barely varies over six labelled photos (spread 1e-4)
    got its weight divided by that spread, and LP-FT's first step, moving it by a little,
    sent the fine-tune's loss into the hundreds. Folded, the probe's weights stay on the
    scale of the typical feature's."""
    g = torch.Generator().manual_seed(0)
    train_x, train_y = torch.randn(6, 8, generator=g), torch.arange(6) % 3
    train_x[:, 0] = 0.5 + 1e-4 * torch.randn(6, generator=g)
    train_x[:, 0] += 1e-4 * train_y  # it even tells the classes apart
    probe = probes.linear_probe(train_x, train_y, 3, 100, 0)
    assert probe.weight.abs().max() < 10
    moved = train_x.clone()
    moved[:, 0] += 0.1  # a fine-tune step nudges the unit
    assert (probe(moved) - probe(train_x)).abs().max() < 5


def test_the_probe_reads_raw_features_as_its_standardised_fit_and_heads_lp_ft(sample):
    """The folded probe equals the classifier fitted on centred features divided by their
    mean spread (refitted here by hand), and LP-FT's start is the backbone with exactly
    that probe as its head."""
    from shared.models import build_model

    g = torch.Generator().manual_seed(1)
    train_x, test_x = 3 + 2 * torch.randn(40, 6, generator=g), torch.randn(5, 6, generator=g)
    train_y = torch.arange(40) % 3
    probe = probes.linear_probe(train_x, train_y, 3, 30, 0)
    mean, std = train_x.mean(0), train_x.std(0).mean()
    torch.manual_seed(0)
    by_hand = nn.Linear(6, 3)
    optimizer = torch.optim.AdamW(by_hand.parameters(), 1e-2, weight_decay=1e-4)
    for _ in range(30):
        loss = nn.functional.cross_entropy(by_hand((train_x - mean) / std), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    torch.testing.assert_close(probe(test_x), by_hand((test_x - mean) / std).detach())

    backbone, spec = build_model("resnet18", 3, "none", 32)
    pretrain.split_head(backbone, spec)
    wide = probes.linear_probe(torch.randn(12, 512, generator=g), torch.arange(12) % 3, 3,
                               5, 0)
    start = probes.probe_start(backbone.state_dict(), "resnet18", 3, 32, wide)
    model, _ = build_model("resnet18", 3, "none", 32)
    model.load_state_dict(start)
    x = torch.randn(2, 3, 32, 32, generator=g)
    backbone.eval(), model.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), wide(backbone(x)))


def test_the_knn_gate_passes_learnt_features_and_fails_random_ones():
    g = torch.Generator().manual_seed(0)
    train_y, val_y = torch.arange(60) % 3, torch.arange(30) % 3
    learnt = (torch.eye(3)[train_y] + 0.1 * torch.randn(60, 3, generator=g),
              torch.eye(3)[val_y] + 0.1 * torch.randn(30, 3, generator=g))
    noise = (torch.randn(60, 3, generator=g), torch.randn(30, 3, generator=g))
    passed = probes.knn_gate(learnt, noise, train_y, val_y, 3, 5)
    assert passed["passed"] and passed["value"] < 0.01
    assert not probes.knn_gate(noise, learnt, train_y, val_y, 3, 5)["passed"]
    assert not probes.knn_gate(noise, noise, train_y, val_y, 3, 5)["passed"]
    unmeasured = probes.knn_gate(learnt, None, train_y, val_y, 3, 5)
    assert unmeasured["value"] is None and not unmeasured["passed"]
