"""FGSM (Goodfellow et al. 2015) and PGD (Madry et al. 2018), written out, on pixels in [0, 1].

The attacks perturb the unnormalised image and clamp it to [0, 1]; normalisation happens
inside `Normalized`, the model wrapper, so the budget is a budget on pixels (the seed clamped
normalised tensors to [0, 1], which is the wrong space). Budgets are in 1/255 units.

Mode: the attacks run the network in eval mode (batch norm on its running statistics,
dropout off), as it predicts, and put each module back in its own mode afterwards, so
attacking never changes the batch-norm statistics, and batch norms that training keeps in eval
(--freeze-bn, --freeze-stages, head-only epochs) stay there. Gradients are taken with
`torch.autograd.grad` with respect to the input only: no parameter's .grad is touched.
"""

import torch
import torch.nn.functional as F
from torch import nn

from shared.models import evaluating


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
    with torch.enable_grad():
        loss = F.cross_entropy(model(pixels).float(), labels)
        (gradient,) = torch.autograd.grad(loss, pixels)
    return gradient


def _in_eval_mode(attack):
    def wrapped(model, *args, **kwargs):
        with evaluating(model):  # each module back in its own mode: frozen batch norms stay
            return attack(model, *args, **kwargs)
    wrapped.__doc__, wrapped.__name__ = attack.__doc__, attack.__name__
    return wrapped


@_in_eval_mode
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


@_in_eval_mode
def pgd(model: nn.Module, pixels: torch.Tensor, labels: torch.Tensor, eps: float,
        steps: int = 10, step: float | None = None, random_start: bool = True) -> torch.Tensor:
    """`steps` signed-gradient steps of size `step` (default 2.5 eps / steps), each projected
    onto the eps-ball around `pixels` and onto [0, 1]; from a uniform random point of the ball
    with `random_start`. `eps` and `step` in 1/255 units."""
    eps = eps / 255
    step = 2.5 * eps / steps if step is None else step / 255
    adversarial = pixels
    if random_start:
        adversarial = (pixels + torch.empty_like(pixels).uniform_(-eps, eps)).clamp(0, 1)
    for _ in range(steps):
        adversarial = adversarial + step * _loss_gradient(model, adversarial, labels).sign()
        adversarial = torch.min(torch.max(adversarial, pixels - eps), pixels + eps).clamp(0, 1)
    return adversarial.detach()
