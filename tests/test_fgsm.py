"""Task 7: FGSM and PGD on [0, 1] pixels, adversarial training through the engine, robust
accuracy in metrics.json."""

import json

import pytest
import torch
import torch.nn.functional as F
from conftest import assert_predictions_reproduce, run_cli
from torch import nn

from shared.results import write_tables
from task7_fgsm.fgsm import Normalized, fgsm, pgd

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


def train(model: nn.Module, adversarial_eps: float = 0.0, steps: int = 200) -> nn.Module:
    g = torch.Generator().manual_seed(1)
    attacked = Normalized(model, MEAN, STD)
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(steps):
        x, y = squares(64, g)
        if adversarial_eps:
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


def test_adversarial_training_raises_robust_accuracy():
    g = torch.Generator().manual_seed(5)
    x, y = squares(256, g)
    torch.manual_seed(0)
    standard = Normalized(train(small_cnn()), MEAN, STD)
    torch.manual_seed(0)
    robust = Normalized(train(small_cnn(), adversarial_eps=8), MEAN, STD)

    def accuracy(model, images):
        with torch.no_grad():
            return (model(images).argmax(1) == y).float().mean().item()

    assert accuracy(standard, x) > 0.9 and accuracy(robust, x) > 0.9
    assert accuracy(robust, pgd(robust, x, y, 8)) > accuracy(standard, pgd(standard, x, y, 8)) \
        + 0.2


def test_adversarial_training_replaces_the_chosen_images_by_fgsm_examples():
    from types import SimpleNamespace

    from task7_fgsm.train import adversarial_batches

    g = torch.Generator().manual_seed(0)
    pixels, labels = squares(16, g)
    mean, std = torch.tensor(MEAN).view(1, 3, 1, 1), torch.tensor(STD).view(1, 3, 1, 1)
    images = (pixels - mean) / std
    model = small_cnn()

    def perturbed(mode, prob):
        args = SimpleNamespace(model="resnet18", adv_mode=mode, adv_prob=prob, adv_eps=8.0,
                               fast=False)  # resnet18: ImageNet's mean and std, as MEAN, STD
        torch.manual_seed(0)
        out = adversarial_batches(args)(model, images, labels)
        return ((out - images) * std).flatten(1).abs().amax(1)  # each image's pixel change

    assert torch.equal(perturbed("batch", 0.0), torch.zeros(16))
    moved = perturbed("sample", 0.5)
    assert 0 < (moved > 0).sum() < 16  # some images attacked, the others untouched
    assert moved.max() <= 8 / 255 + 1e-5  # inside the budget, in pixels
    assert (perturbed("batch", 1.0) > 4 / 255).all()


def test_training_and_evaluation_from_the_command_line(sample, tmp_path):
    root, _ = sample
    common = ["--dataset", "bird", "--data-root", str(root), "--model", "resnet18",
              "--weights", "none", "--image-size", "32", "--batch-size", "8",
              "--val-fraction", "0.25", "--robust-eps", "2", "8", "--pgd-steps", "3"]
    out = tmp_path / "results" / "task7_fgsm" / "bird"
    result = run_cli("task7_fgsm/train.py", *common, "--epochs", "1", "--adv-mode", "sample",
                     "--out", str(out / "fgsm"))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "fgsm" / "metrics.json").read_text())
    assert record["variant"] == "fgsm"
    robust = record["metrics"]["robust_top1"]
    assert set(robust) == {"fgsm@2/255", "pgd3@2/255", "fgsm@8/255", "pgd3@8/255"}
    assert all(0 <= v <= 1 for v in robust.values())
    assert record["metrics"]["clean_top1"] == pytest.approx(record["metrics"]["test_top1"])

    result = run_cli("task7_fgsm/train.py", *common,
                     "--evaluate", str(out / "fgsm" / "best.pt"), "--out", str(out / "standard"))
    assert result.returncode == 0, result.stderr[-3000:]
    again = json.loads((out / "standard" / "metrics.json").read_text())
    assert again["variant"] == "standard"
    assert again["metrics"]["clean_top1"] == pytest.approx(record["metrics"]["clean_top1"])
    for run in (out / "fgsm", out / "standard"):  # clean and every attack has its file
        backed = assert_predictions_reproduce(run)["predictions"]
        assert {"clean_top1", "robust_top1:fgsm@2/255", "robust_top1:pgd3@8/255"} <= set(backed)
    # Table 6: the FGSM-trained row against standard on clean and each of the four attacks
    table = write_tables(tmp_path / "results").read_text().split("## Table 6")[1]
    assert "Δ PGD3@8/255 vs standard" in table
    row = next(line for line in table.splitlines() if line.startswith("| resnet18")
               and "| fgsm eps" in line)
    assert row.count("), p ") == 5
