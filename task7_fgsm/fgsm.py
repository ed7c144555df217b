"""FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018), written out, on pixels in [0, 1].

The attacks perturb the unnormalised image and clamp it to [0, 1]; normalisation happens
inside `Normalized`, the model wrapper, so the budget is a budget on pixels (the seed clamped
normalised tensors to [0, 1], which is the wrong space). Budgets are in 1/255 units.

Mode: the attacks run the network in eval mode (batch norm on its running statistics,
dropout off), as it predicts, and put each module back in its own mode afterwards, so
attacking never changes the batch-norm statistics, and batch norms that training keeps in eval
(--freeze-bn, --freeze-stages, head-only epochs) stay there. Gradients are taken with
`torch.autograd.grad` with respect to the input only: no parameter's .grad is touched.

Evaluation (Carlini et al. 2019, "On Evaluating Adversarial Robustness"): `worst_case` keeps,
per image, the attack that hurts it most, so an image counts as robust only if it survives
every attack; `gradient_masking_checks` flags results that only a masked gradient explains.
"""

import torch
import torch.nn.functional as F
from torch import nn

from shared.models import evaluating
from shared.stats import wilson_interval

UNBOUNDED = 255.0  # a budget of the whole pixel range: any image is reachable


class Normalized(nn.Module):
    """A classifier taking [0, 1] pixels: normalises, then runs `model`."""

    def __init__(self, model: nn.Module, mean, std):
        super().__init__()
        self.model = model
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.model((pixels - self.mean) / self.std)


def _loss_gradient(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor
                   ) -> torch.Tensor:
    pixels = pixels.detach().requires_grad_(True)
    # eval mode, each module put back in its own after: frozen batch norms stay frozen
    with evaluating(model), torch.enable_grad():
        loss = F.cross_entropy(model(pixels).float(), labels)
        (gradient,) = torch.autograd.grad(loss, pixels)
    return gradient


def fgsm(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float,
         random_start: bool = False, step: float | None = None) -> torch.Tensor:
    """x + eps * sign(grad of the loss), clamped to [0, 1]. `eps` in 1/255 units. With
    `random_start` ("fast" FGSM, Wong et al. 2020): start at a uniform point of the eps-ball
    and take one step of `step` (default 1.25 eps), projected back into the ball."""
    eps = eps / 255
    start, size = pixels, eps
    if random_start:
        start = (pixels + torch.empty_like(pixels).uniform_(-eps, eps)).clamp(0, 1)
        size = 1.25 * eps if step is None else step / 255
    adversarial = start + size * _loss_gradient(model, start, labels).sign()
    adversarial = torch.min(torch.max(adversarial, pixels - eps), pixels + eps)
    return adversarial.clamp(0, 1).detach()


def pgd(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float,
        steps: int = 10, step: float | None = None, random_start: bool = True,
        generator: torch.Generator | None = None) -> torch.Tensor:
    """`steps` signed-gradient steps of size `step` (default 2.5 eps / steps), each projected
    onto the eps-ball around `pixels` and onto [0, 1]; from a uniform random point of the ball
    with `random_start`, drawn from `generator` (a restart's own: its start does not depend on
    how many restarts run). `eps` and `step` in 1/255 units."""
    eps = eps / 255
    step = 2.5 * eps / steps if step is None else step / 255
    adversarial = pixels
    if random_start:
        noise = torch.empty_like(pixels).uniform_(-eps, eps, generator=generator)
        adversarial = (pixels + noise).clamp(0, 1)
    for _ in range(steps):
        adversarial = adversarial + step * _loss_gradient(model, adversarial, labels).sign()
        adversarial = torch.min(torch.max(adversarial, pixels - eps), pixels + eps).clamp(0, 1)
    return adversarial.detach()


def margin(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The true class's score minus the best other class's: below 0 when misclassified (a tie
    counts as right, as `shared.results.hits` scores it)."""
    own = logits.gather(1, labels[:, None]).squeeze(1)
    return own - logits.scatter(1, labels[:, None], float("-inf")).amax(1)


def worst_case(attack_logits: list[torch.Tensor], labels: torch.Tensor) -> torch.Tensor:
    """Per image, the logits of the attack that leaves its true class the smallest margin:
    right under the worst case only if right under every attack."""
    stacked = torch.stack(attack_logits)  # (attacks, images, classes)
    worst = torch.stack([margin(x, labels) for x in attack_logits]).argmin(0)
    return stacked[worst, torch.arange(len(labels), device=labels.device)]


def _budget(name: str) -> tuple[str, float]:  # "pgd10@4/255" -> ("pgd10", 4.0)
    attack, eps = name.split("@")
    return attack, float(eps.removesuffix("/255"))


def gradient_masking_checks(clean: float, robust: dict[str, float], unbounded_correct: int,
                            images: int, classes: int) -> dict:
    """Carlini et al. 2019's signs of a masked gradient, from a run's accuracies (fractions):
    robust accuracy rising with the budget (under PGD and the worst case, the evaluation's
    attacks; FGSM alone may rise, since its one step of the whole budget overshoots: a
    standard lite0 fell to 2.0% at 4/255 and rose to 5.0% at 8/255 under FGSM while PGD
    left 0%), PGD above FGSM at a budget (more steps must not help the model), any attack
    above clean accuracy, and an unbounded attack (UNBOUNDED, from the clean image) leaving
    accuracy above chance (the Wilson interval's lower end over 1 / classes). `robust` maps
    "attack@eps/255" to accuracy. Returns `passed`, `failed` (one line each) and the
    unbounded attack's accuracy against chance."""
    failed = []
    by_attack: dict[str, list] = {}
    for name, accuracy in robust.items():
        attack, eps = _budget(name)
        if attack != "fgsm":
            by_attack.setdefault(attack, []).append((eps, accuracy, name))
        if accuracy > clean:
            failed.append(f"{name} {accuracy:.1%} above clean {clean:.1%}")
        fgsm_name = name.replace(attack, "fgsm", 1)
        if attack.startswith("pgd") and robust.get(fgsm_name, 1.0) < accuracy:
            failed.append(f"{name} {accuracy:.1%} above {fgsm_name} {robust[fgsm_name]:.1%}")
    for points in by_attack.values():
        points.sort()
        for (_, lower, lower_name), (_, higher, higher_name) in zip(points[:-1], points[1:],
                                                                    strict=True):
            if higher > lower:
                failed.append(f"{higher_name} {higher:.1%} above {lower_name} {lower:.1%}")
    unbounded = unbounded_correct / max(images, 1)
    if wilson_interval(unbounded_correct, images)[0] > 1 / classes:
        failed.append(f"unbounded attack leaves {unbounded:.1%}, above chance "
                      f"{1 / classes:.1%}")
    return {"passed": not failed, "failed": failed, "unbounded_top1": unbounded,
            "chance": 1 / classes}
