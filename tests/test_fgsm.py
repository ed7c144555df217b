"""Task 7: FGSM and PGD on [0, 1] pixels, adversarial training through the engine, robust
accuracy in metrics.json."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_predictions_reproduce, run_cli
from fgsm import Normalized, fgsm, gradient_masking_checks, pgd
from torch import nn

from shared.engine import Runtime
from shared.results import hits, load_predictions, write_tables

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def squares(n: int, g: torch.Generator, noise: float = 0.15):
    """[0, 1] photos of noise with a bright square whose colour is the class (3 classes)."""
    colours = torch.tensor([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    x = (0.5 + noise * torch.randn(n, 3, 16, 16, generator=g)).clamp(0, 1)
    labels = torch.randint(0, 3, (n,), generator=g)
    corners = torch.randint(0, 10, (n, 2), generator=g)
    for i, (r, c) in enumerate(corners.tolist()):
        x[i, :, r:r + 6, c:c + 6] = 0.5 + 0.2 * (colours[labels[i]][:, None, None] - 0.5)
    return x, labels


def small_cnn() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(),
                         nn.Conv2d(16, 16, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                         nn.Flatten(), nn.Linear(16, 3))


def train(model: nn.Module, adversarial_eps: float = 0.0, steps: int = 200,
          attack: str = "fgsm") -> nn.Module:
    g = torch.Generator().manual_seed(1)
    attacked = Normalized(model, MEAN, STD)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        x, y = squares(64, g)
        if adversarial_eps and attack == "pgd":
            x = pgd(attacked, x, y, adversarial_eps, steps=3)
        elif adversarial_eps:
            x = fgsm(attacked, x, y, adversarial_eps, random_start=True)
        model.train()
        loss = F.cross_entropy(attacked(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


@pytest.fixture(scope="module")
def trained():
    torch.manual_seed(0)
    return Normalized(train(small_cnn()), MEAN, STD)


@pytest.mark.parametrize("attack", ["fgsm", "fgsm-fast", "pgd"])
def test_perturbation_stays_in_budget_and_in_range(trained, attack):
    x, y = squares(32, torch.Generator().manual_seed(2))
    x[:4] = 1.0  # saturated pixels: the clamp must hold at the range's edge
    eps = 8
    if attack == "pgd":
        adversarial = pgd(trained, x, y, eps, steps=5)
    else:
        adversarial = fgsm(trained, x, y, eps, random_start=attack == "fgsm-fast")
    assert (adversarial - x).abs().max() <= eps / 255 + 1e-6
    assert adversarial.min() >= 0 and adversarial.max() <= 1
    assert (adversarial - x).abs().max() > eps / 255 / 2  # it did move


def test_fgsm_raises_the_loss_and_pgd_at_least_as_much(trained):
    x, y = squares(128, torch.Generator().manual_seed(3))
    clean = F.cross_entropy(trained(x), y).item()
    with_fgsm = F.cross_entropy(trained(fgsm(trained, x, y, 4)), y).item()
    with_pgd = F.cross_entropy(trained(pgd(trained, x, y, 4, steps=10)), y).item()
    assert with_fgsm > clean + 0.1
    assert with_pgd >= with_fgsm


def test_attacks_leave_mode_statistics_and_gradients_alone(trained):
    model = trained.model.train()
    model.zero_grad(set_to_none=True)  # training left gradients behind
    before = {k: v.clone() for k, v in model.state_dict().items()}
    x, y = squares(16, torch.Generator().manual_seed(4))
    pgd(trained, x, y, 4, steps=3)
    assert model.training  # mode restored
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())
    model.eval()


def test_attacks_keep_each_module_in_its_own_mode(trained):
    """During adversarial training some batch norms stay in eval on purpose (--freeze-bn,
    --freeze-stages, head-only epochs); an attack must not put them back into training."""
    model = trained.model.train()
    frozen = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)][:1]
    assert frozen, "the test network needs a batch norm"
    frozen[0].eval()
    modes = {name: m.training for name, m in model.named_modules()}
    x, y = squares(8, torch.Generator().manual_seed(5))
    fgsm(trained, x, y, 4)
    pgd(trained, x, y, 4, steps=2)
    assert {name: m.training for name, m in model.named_modules()} == modes
    statistics = frozen[0].running_mean.clone()
    model(x * 0.5 + 0.3)  # a training forward: the frozen norm's statistics stay put
    assert torch.equal(frozen[0].running_mean, statistics)
    model.eval()


def test_fgsm_matches_the_closed_form_of_a_linear_model():
    """For softmax regression, d loss / d x = W^T (softmax(Wx + b) - onehot(y)): an
    independent computation of FGSM's direction."""
    torch.manual_seed(0)
    linear = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 5))
    x = torch.rand(6, 3, 4, 4) * 0.8 + 0.1  # away from the [0, 1] edges
    y = torch.randint(0, 5, (6,))
    ours = fgsm(linear, x, y, 2)
    w, b = linear[1].weight, linear[1].bias
    with torch.no_grad():
        p = torch.softmax(x.flatten(1) @ w.T + b, dim=1) - F.one_hot(y, 5)
        direction = (p @ w).sign().view_as(x)
    torch.testing.assert_close(ours, (x + 2 / 255 * direction).clamp(0, 1))


def train_through_task7(tmp_path, attack: str, prob: float) -> nn.Module:
    """small_cnn trained by task 7's own training epoch (`adversarial_epoch`) in the
    engine's loop: 200 steps of 64 squares (uint8, as a loader gives them), Adam 3e-3, each
    batch attacked at 8/255 with probability `prob` (fast FGSM, or PGD-3)."""
    from adversarial import Adversary, adversarial_epoch

    from shared import engine, models

    x, y = squares(200 * 64, torch.Generator().manual_seed(1))
    pixels = (x * 255).round().to(torch.uint8)
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(pixels, y), 64)
    spec = models.ModelSpec("small_cnn", True, MEAN, STD, head="7.", stages=(("0.",),))
    cfg = engine.TrainConfig(out=tmp_path, epochs=1, lr=3e-3, optimizer="adamw",
                             channels_last=False)
    torch.manual_seed(0)
    loop, _ = engine.make_loop(small_cnn(), spec, cfg, Runtime(torch.device("cpu")),
                               len(loader))
    adversary = Adversary(attack, eps=8.0, steps=3, random_start=True, mode="batch",
                          prob=prob)
    adversarial_epoch(adversary)(loop, loop.model.train(), loader, 0)
    return loop.model.eval()


@pytest.mark.parametrize("attack", ["fgsm", "pgd"])
def test_adversarial_training_raises_robust_accuracy(attack, tmp_path):
    g = torch.Generator().manual_seed(5)
    x, y = squares(256, g)
    standard = Normalized(train_through_task7(tmp_path, attack, prob=0.0), MEAN, STD)
    robust = Normalized(train_through_task7(tmp_path, attack, prob=1.0), MEAN, STD)

    def accuracy(model, images):
        with torch.no_grad():
            return (model(images).argmax(1) == y).float().mean().item()

    assert accuracy(standard, x) > 0.9 and accuracy(robust, x) > 0.9
    assert accuracy(robust, pgd(robust, x, y, 8)) > accuracy(standard, pgd(standard, x, y, 8)) \
        + 0.2


def test_the_gate_passes_robust_training_and_fails_a_standard_model_relabelled():
    """Table 6's gate on validation: an adversarially trained model against the standard
    one passes; the standard model against itself (a standard model labelled adversarial)
    does not, nor a run without a standard model to compare with."""
    from types import SimpleNamespace

    from adversarial import robustness_gate

    x, y = squares(128, torch.Generator().manual_seed(9))
    pixels = (x * 255).round().to(torch.uint8)
    val = Batches([(pixels[i:i + 32], y[i:i + 32]) for i in range(0, 128, 32)], range(128))
    torch.manual_seed(0)
    standard = train(small_cnn())
    torch.manual_seed(0)
    robust = train(small_cnn(), adversarial_eps=8)
    spec, rt = SimpleNamespace(mean=MEAN, std=STD), Runtime(torch.device("cpu"))
    passed = robustness_gate(robust, standard, spec, val, 8, 0, rt)
    (gate,) = passed["gates"]
    assert gate["passed"] and gate["value"] < 0.01 and gate["threshold"] == 0.01
    assert passed["metrics"]["val_pgd10_top1"] > passed["metrics"]["standard_val_pgd10_top1"]
    (relabelled,) = robustness_gate(standard, standard, spec, val, 8, 0, rt)["gates"]
    assert not relabelled["passed"] and relabelled["value"] == 1.0
    (unmeasured,) = robustness_gate(robust, None, spec, val, 8, 0, rt)["gates"]
    assert not unmeasured["passed"] and unmeasured["value"] is None


def test_adversarial_training_replaces_the_chosen_images_by_fgsm_examples():
    from adversarial import Adversary

    g = torch.Generator().manual_seed(0)
    pixels, labels = squares(16, g)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (pixels - mean) / std
    attacked = Normalized(small_cnn(), MEAN, STD)

    def perturbed(mode, prob, attack="fgsm"):
        adversary = Adversary(attack, eps=8.0, steps=2, random_start=False, mode=mode,
                              prob=prob)
        torch.manual_seed(0)
        out = adversary.perturb(attacked, images, labels, Runtime(torch.device("cpu")))
        return ((out - images) * std).flatten(1).abs().amax(1)  # each image's pixel change

    assert torch.equal(perturbed("batch", 0.0), torch.zeros(16))
    moved = perturbed("sample", 0.5)
    assert (moved > 0).sum() == 8  # half of the batch attacked, the others untouched
    draws = {tuple(Adversary(mode="sample", prob=0.25).chosen(16).tolist()) for _ in range(5)}
    assert len(draws) > 1 and {len(d) for d in draws} == {4}  # a new quarter each batch
    assert moved.max() <= 8 / 255 + 1e-5  # inside the budget, in pixels
    assert (perturbed("batch", 1.0) > 4 / 255).all()
    with_pgd = perturbed("batch", 1.0, "pgd")  # random start, then two steps of 10/255
    assert (with_pgd > 4 / 255).all() and with_pgd.max() <= 8 / 255 + 1e-5


def attack_run(model: nn.Module, tmp_path, name: str, restarts: int = 1, eps=(2, 4, 8),
               images: int = 96) -> dict:
    """task 7's test-split evaluation on [0, 1] squares made uint8, in process."""
    from types import SimpleNamespace

    from adversarial import robust_accuracy

    x, y = squares(images, torch.Generator().manual_seed(7))
    pixels = (x * 255).round().to(torch.uint8)
    records = [SimpleNamespace(label=int(label), image_id=None, key=f"img{i}")
               for i, label in enumerate(y.tolist())]
    loader = Batches([(pixels[i:i + 32], y[i:i + 32]) for i in range(0, images, 32)],
                     SimpleNamespace(records=records))
    spec = SimpleNamespace(mean=MEAN, std=STD)
    out = tmp_path / name
    out.mkdir()
    return robust_accuracy(model, spec, loader, eps=list(eps), pgd_steps=3, restarts=restarts,
                           seed=0, rt=Runtime(torch.device("cpu")), out=out) | {"out": out}


class Batches(list):
    """A loader stand-in: its batches, and the dataset they come from."""

    def __init__(self, batches, dataset):
        super().__init__(batches)
        self.dataset = dataset


def correct_in(run: dict, name: str) -> torch.Tensor:
    saved = load_predictions(run["out"] / run["predictions"][name])
    return torch.from_numpy(hits(saved["logits"], saved["label"]))


def test_restarts_never_raise_robust_accuracy_and_the_worst_case_is_every_attack(trained,
                                                                                 tmp_path):
    one = attack_run(trained.model, tmp_path, "one")
    three = attack_run(trained.model, tmp_path, "three", restarts=3)
    robust_one, robust_three = one["metrics"]["robust_top1"], three["metrics"]["robust_top1"]
    assert any(0.05 < v < 0.95 for v in robust_one.values())  # attacks that sometimes win
    for eps in (2, 4, 8):
        pgd_name, worst, single = f"pgd3@{eps}/255", f"worst@{eps}/255", f"fgsm@{eps}/255"
        assert robust_three[pgd_name] <= robust_one[pgd_name]
        # restart 0 is the one-restart run's attack: every image robust with three restarts
        # is robust with one
        survived_three = correct_in(three, f"robust_top1:{pgd_name}")
        assert not (survived_three & ~correct_in(one, f"robust_top1:{pgd_name}")).any()
        # the worst case is the minimum over the attacks, each computed on its own
        x, y = squares(96, torch.Generator().manual_seed(7))
        x = (x * 255).round() / 255
        separately = (trained(fgsm(trained, x, y, eps)).argmax(1) == y)
        for r in range(3):
            start = torch.Generator().manual_seed(1000 * r)
            separately &= trained(pgd(trained, x, y, eps, steps=3, generator=start)
                                  ).argmax(1) == y
        assert torch.equal(correct_in(three, f"robust_top1:{worst}"), separately)
        assert torch.equal(correct_in(three, f"robust_top1:{worst}"),
                           correct_in(three, f"robust_top1:{single}") & survived_three)
        assert robust_three[worst] <= min(robust_three[pgd_name], robust_three[single])


class Rounded(nn.Module):
    """A model that masks its gradient: its logits pass through rounding, whose gradient is
    zero, so every gradient attack sees a flat loss."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x):
        return torch.round(self.model(x) * 100) / 100


def test_masking_checks_flag_a_model_that_masks_its_gradient(trained, tmp_path):
    honest = attack_run(trained.model, tmp_path, "honest")["metrics"]
    masked = attack_run(Rounded(trained.model), tmp_path, "masked")["metrics"]
    assert honest["unbounded_top1"] <= 1 / 3  # an unbounded attack wins, with a gradient
    assert not any("unbounded" in line for line in honest["gradient_masking"]["failed"])
    # the rounded model looks robust at every budget, but the unbounded attack gives it away
    assert masked["robust_top1"]["pgd3@8/255"] > honest["robust_top1"]["pgd3@8/255"] + 0.3
    assert not masked["gradient_masking"]["passed"]
    assert any("unbounded" in line for line in masked["gradient_masking"]["failed"])


def test_masking_checks_on_constructed_accuracies():
    fine = {"fgsm@2/255": 0.5, "pgd10@2/255": 0.4, "fgsm@8/255": 0.2, "pgd10@8/255": 0.1}
    assert gradient_masking_checks(0.9, fine, 0, 100, 10)["passed"]
    rising = fine | {"pgd10@8/255": 0.45}  # a larger budget, a higher accuracy
    more_steps = fine | {"pgd10@2/255": 0.6}  # PGD above FGSM at the same budget
    above_clean = fine | {"fgsm@2/255": 0.95}
    for accuracies, says in ((rising, "pgd10@8/255 45.0% above pgd10@2/255"),
                             (more_steps, "pgd10@2/255 60.0% above fgsm@2/255"),
                             (above_clean, "fgsm@2/255 95.0% above clean")):
        checks = gradient_masking_checks(0.9, accuracies, 0, 100, 10)
        assert not checks["passed"] and any(line.startswith(says) for line in checks["failed"])
    # FGSM alone may rise with the budget (one step of the whole budget overshoots)
    assert gradient_masking_checks(0.9, fine | {"fgsm@8/255": 0.3}, 0, 100, 10)["passed"]
    worse = {"fgsm@2/255": 0.5, "worst@2/255": 0.1, "fgsm@8/255": 0.6, "worst@8/255": 0.2}
    assert not gradient_masking_checks(0.9, worse, 0, 100, 10)["passed"]
    # 12 of 100 right after an unbounded attack on 10 classes is chance (the interval holds
    # 10%); 25 of 100 is not
    assert gradient_masking_checks(0.9, fine, 12, 100, 10)["passed"]
    assert not gradient_masking_checks(0.9, fine, 25, 100, 10)["passed"]


class _Recorder(nn.Module):
    """A linear two-class model that keeps every photo it is shown. The loss gradient with
    respect to the photo is p_other * (w_other - w_true), so its sign is known in closed
    form at every photo: sign(w_other - w_true)."""

    def __init__(self, weight: torch.Tensor):
        super().__init__()
        self.weight, self.seen = weight, []

    def forward(self, x):
        self.seen.append(x.detach().clone())
        return x.flatten(1) @ self.weight.T


def test_attack_paths_in_closed_form_on_a_linear_model():
    """FGSM is x + eps d (where d = 0 the pixel stays); PGD's default is 10 steps of 2.5 eps
    / 10, so the network sees x, x + 2/255 d, ... up to the eps-ball; random starts replay
    the same uniform draws (fast FGSM: then one step of 1.25 eps, or of `step`, projected
    onto the ball)."""
    torch.manual_seed(0)
    weight = torch.randn(2, 48)
    weight[:, 0] = 0  # a pixel the loss does not depend on: it must not move
    x = 0.3 + 0.4 * torch.rand(4, 3, 4, 4)  # every pixel more than eps from 0 and 1
    labels = torch.tensor([0, 1, 0, 1])
    d = torch.sign(weight[1 - labels] - weight[labels]).view(4, 3, 4, 4)
    eps = 8 / 255
    model = _Recorder(weight)
    torch.testing.assert_close(fgsm(model, x, labels, 8), x + eps * d)
    model.seen.clear()
    torch.testing.assert_close(pgd(model, x, labels, 8, random_start=False), x + eps * d)
    assert len(model.seen) == 10
    for k, seen in enumerate(model.seen):
        torch.testing.assert_close(seen, x + min(2 * k, 8) / 255 * d)

    def in_ball(z):
        return torch.min(torch.max(z, x - eps), x + eps)

    for step, size in ((None, 1.25 * eps), (2, 2 / 255)):
        torch.manual_seed(1)
        start = x + torch.empty_like(x).uniform_(-eps, eps)
        torch.manual_seed(1)
        found = fgsm(model, x, labels, 8, random_start=True, step=step)
        torch.testing.assert_close(found, in_ball(start + size * d))
    model.seen.clear()
    start = x + torch.empty_like(x).uniform_(-eps, eps, generator=torch.Generator().manual_seed(3))
    pgd(model, x, labels, 8, steps=2, step=3, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(model.seen[0], start)
    torch.testing.assert_close(model.seen[1], in_ball(start + 3 / 255 * d))


def test_random_starts_feed_the_network_only_pixels_in_range():
    """From a black and a white photo, the random start lies in [0, 1] before the network
    sees it (fast FGSM and PGD alike), so no gradient is taken at an impossible photo."""
    torch.manual_seed(0)
    model = _Recorder(torch.randn(2, 3 * 4 * 4))
    photos, labels = torch.tensor([0.0, 1.0]).view(2, 1, 1, 1).expand(2, 3, 4, 4), torch.zeros(
        2, dtype=torch.long)
    fgsm(model, photos, labels, eps=8, random_start=True)
    pgd(model, photos, labels, eps=8, steps=2)
    assert len(model.seen) == 3 and all(0 <= x.min() and x.max() <= 1 for x in model.seen)


def test_masking_checks_name_every_failure_and_let_ties_pass():
    """Worked by hand: ties (PGD equal to FGSM, to clean accuracy, flat over budgets) are no
    failure; each failure is one line, in the order the accuracies come and then by attack,
    budgets compared in numeric order whatever order they come in; a PGD budget with no
    FGSM partner is not compared."""
    flat = {"fgsm@2/255": 0.5, "pgd10@2/255": 0.5, "fgsm@8/255": 0.5, "pgd10@8/255": 0.5}
    assert gradient_masking_checks(0.5, flat, 1, 200, 100) == {
        "passed": True, "failed": [], "unbounded_top1": 0.005, "chance": 0.01}
    assert gradient_masking_checks(0.5, flat, 0, 0, 100)["unbounded_top1"] == 0.0
    assert gradient_masking_checks(0.5, flat, 1, 1, 100)["unbounded_top1"] == 1.0
    bad = {"fgsm@2/255": 0.30, "pgd10@2/255": 0.40, "pgd10@8/255": 0.45, "worst@4/255": 0.1,
           "worst@1/255": 0.2, "pgd20@4/255": 0.05, "fgsm@8/255": 0.95}
    assert gradient_masking_checks(0.9, bad, 30, 100, 10) == {
        "passed": False, "unbounded_top1": 0.3, "chance": 0.1, "failed": [
            "pgd10@2/255 40.0% above fgsm@2/255 30.0%",
            "fgsm@8/255 95.0% above clean 90.0%",
            "pgd10@8/255 45.0% above pgd10@2/255 40.0%",
            "unbounded attack leaves 30.0%, above chance 10.0%"]}


def test_the_guard_stops_a_collapsing_run_and_keeps_the_best_epoch(sample, tmp_path,
                                                                  monkeypatch):
    """A constructed collapse: the guard's PGD accuracy reads 50%, 60%, then 30% (30 points
    below the best): training stops after epoch 3 of 5, the epoch tested is 1 or 2, and a
    resumed run does not train on."""
    import adversarial

    import task7_fgsm.train as task7

    readings = iter([(5, 10), (6, 10), (3, 10), (9, 10), (9, 10)])
    monkeypatch.setattr(adversarial, "pgd_correct", lambda *args: next(readings))
    root, _ = sample
    out = tmp_path / "guarded"
    flags = ["--dataset", "bird", "--data-root", str(root), "--model", "resnet18",
             "--weights", "none", "--image-size", "32", "--batch-size", "8",
             "--val-fraction", "0.25", "--epochs", "5", "--select", "clean",
             "--robust-eps", "2", "--pgd-steps", "1", "--out", str(out)]
    task7.main(task7.parse_args(flags))
    record = json.loads((out / "metrics.json").read_text())
    guard = record["metrics"]["overfit_guard"]
    assert guard["stopped_at_epoch"] == 3 and "from 60.0% to 30.0%" in guard["stopped"]
    assert [h["guard_robust_top1"] for h in record["history"]] == [0.5, 0.6, 0.3]
    best = torch.load(out / "best.pt", weights_only=True)
    assert record["metrics"]["best_epoch"] == best["epoch"] in (1, 2)
    (out / "metrics.json").unlink()  # as if killed before it was written
    task7.main(task7.parse_args([*flags, "--resume"]))
    assert len(json.loads((out / "metrics.json").read_text())["history"]) == 3


def test_a_robust_tie_goes_to_the_better_clean_epoch(sample, tmp_path, monkeypatch):
    """Validation PGD accuracy 0% in every epoch (a budget that left no robustness): the
    epoch kept is the one with the best clean validation accuracy, not the first."""
    import adversarial

    import task7_fgsm.train as task7

    clean = iter([0.3, 0.5, 0.4])
    monkeypatch.setattr(adversarial, "pgd_correct", lambda *args: (0, 10))
    monkeypatch.setattr(adversarial.engine, "validate_top1",
                        lambda *args: {"val_top1": next(clean)})
    root, _ = sample
    out = tmp_path / "tied"
    task7.main(task7.parse_args([
        "--dataset", "bird", "--data-root", str(root), "--model", "resnet18", "--weights",
        "none", "--image-size", "32", "--batch-size", "8", "--val-fraction", "0.25",
        "--epochs", "3", "--overfit-guard", "0", "--robust-eps", "2", "--pgd-steps", "1",
        "--test-images", "4", "--out", str(out)]))
    record = json.loads((out / "metrics.json").read_text())
    assert [h["val_robust_top1"] for h in record["history"]] == [0, 0, 0]
    assert record["metrics"]["best_epoch"] == 2 == torch.load(out / "best.pt")["epoch"]


def test_evaluate_sees_the_pixels_the_trained_rows_see(sample, tmp_path, monkeypatch):
    """Table 6's standard row (`--evaluate`, no recipe flags) and an adversarially trained
    row attack identical test inputs: the view comes from the checkpoint."""
    import adversarial

    import task7_fgsm.train as task7

    attacked = []
    real = adversarial.robust_accuracy

    def recording(model, spec, loader, **kwargs):
        attacked.append(torch.cat([images for images, _ in loader]))
        return real(model, spec, loader, **kwargs)

    monkeypatch.setattr(adversarial, "robust_accuracy", recording)
    root, _ = sample
    common = ["--dataset", "bird", "--data-root", str(root), "--robust-eps", "2",
              "--pgd-steps", "1", "--test-images", "6"]
    trained = tmp_path / "trained"
    task7.main(task7.parse_args([
        *common, "--model", "resnet18", "--weights", "none", "--image-size", "40",
        "--resize-mode", "center-crop", "--crop-ratio", "0.6", "--batch-size", "8",
        "--epochs", "1", "--select", "clean", "--overfit-guard", "0", "--out", str(trained)]))
    task7.main(task7.parse_args([*common, "--evaluate", str(trained / "best.pt"),
                                 "--out", str(tmp_path / "standard")]))
    assert attacked[0].shape[-1] == 40 and torch.equal(attacked[0], attacked[1])


def test_training_and_evaluation_from_the_command_line(sample, tmp_path):
    root, _ = sample
    common = ["--dataset", "bird", "--data-root", str(root), "--model", "resnet18",
              "--weights", "none", "--image-size", "32", "--batch-size", "8",
              "--val-fraction", "0.25", "--robust-eps", "2", "8", "--pgd-steps", "3",
              "--val-pgd-steps", "2"]
    out = tmp_path / "results" / "task7_fgsm" / "bird"
    result = run_cli("task7_fgsm/train.py", *common, "--epochs", "1", "--adv-mode", "sample",
                     "--out", str(out / "fgsm"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "fgsm" / "metrics.json").read_text())
    assert record["variant"] == "fgsm"
    metrics = record["metrics"]
    assert set(metrics["robust_top1"]) == {f"{attack}@{eps}/255" for eps in (2, 8)
                                           for attack in ("fgsm", "pgd3", "worst")}
    assert all(0 <= v <= 1 for v in metrics["robust_top1"].values())
    assert metrics["clean_top1"] == pytest.approx(metrics["test_top1"])
    assert set(metrics["gradient_masking"]) == {"passed", "failed", "unbounded_top1", "chance"}
    assert metrics["overfit_guard"]["stopped_at_epoch"] is None
    epoch = record["history"][0]  # robust selection and the guard ran on validation
    assert 0 <= epoch["val_robust_top1"] <= 1 and 0 <= epoch["guard_robust_top1"] <= 1
    assert metrics["best_val_robust_top1"] == epoch["val_robust_top1"]

    result = run_cli("task7_fgsm/train.py", *common, "--restarts", "2",
                     "--evaluate", str(out / "fgsm" / "best.pt"), "--out", str(out / "standard"))
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((out / "standard" / "metrics.json").read_text())
    assert again["variant"] == "standard"
    assert again["metrics"]["clean_top1"] == pytest.approx(record["metrics"]["clean_top1"])
    # PGD training, attacked on a seeded subset of the test split (outside the tables' tree:
    # other test images than the standard row's, which Table 6 refuses to compare)
    subset = tmp_path / "subset" / "pgd2"
    result = run_cli("task7_fgsm/train.py", *common, "--epochs", "1", "--adv-attack", "pgd",
                     "--adv-steps", "2", "--test-images", "6", "--out", str(subset))
    assert result.returncode == 0, result.stderr[-3000:]
    pgd_run = json.loads((subset / "metrics.json").read_text())
    assert pgd_run["variant"] == "pgd2" and pgd_run["data"]["test_attacked"] == 6
    assert len(load_predictions(subset / "predictions_worst_8_255.npz")["label"]) == 6
    for run in (out / "fgsm", out / "standard"):  # clean and every attack has its file
        backed = assert_predictions_reproduce(run)["predictions"]
        assert {"clean_top1", "unbounded_top1", "robust_top1:fgsm@2/255",
                "robust_top1:pgd3@8/255", "robust_top1:worst@8/255"} <= set(backed)
    # Table 6: the FGSM-trained row against standard on clean and each worst-case budget
    table = write_tables(tmp_path / "results").read_text().split("## Table 6")[1]
    assert "Δ WORST@8/255 vs standard" in table and "FGSM + PGD-3 x 2" in table
    row = next(line for line in table.splitlines() if line.startswith("| resnet18")
               and "| fgsm eps" in line)
    assert "best epoch by robust val" in row
    # trained from scratch with no --standard: the gate is not measured, so no verdict
    (gate,) = record["gates"]
    assert gate["value"] is None and not gate["passed"] and "no standard model" in gate["name"]
    assert row.count("did not work at this budget") == 3 and "), p " not in row


def test_fgsm_training_keeps_frozen_batch_norm_statistics(sample, tmp_path):
    """The strong recipe's freezing (--freeze-bn, --freeze-stages, head-only epochs) through
    adversarial training: every batch norm stays in eval mode, so its statistics (a fresh
    network's: mean 0, variance 1) never move, attacks or not."""
    root, _ = sample
    out = tmp_path / "strong"
    result = run_cli("task7_fgsm/train.py", "--dataset", "bird", "--data-root", str(root),
                     "--model", "resnet18", "--weights", "none", "--recipe", "strong",
                     "--image-size", "32", "--batch-size", "8", "--epochs", "2",
                     "--head-only-epochs", "1", "--adv-prob", "1", "--robust-eps", "2",
                     "--pgd-steps", "1", "--val-pgd-steps", "1", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    state = torch.load(out / "last.pt", weights_only=True)["parts"]["model"]
    means = [k for k in state if k.endswith("running_mean")]
    assert len(means) == 20  # resnet18's batch norms
    for key in means:
        assert torch.equal(state[key], torch.zeros_like(state[key])), key
        variance = state[key.replace("running_mean", "running_var")]
        assert torch.equal(variance, torch.ones_like(variance)), key
    trained = json.loads((out / "metrics.json").read_text())
    assert trained["args"]["freeze_bn"] and trained["history"][1]["train_loss"] > 0
