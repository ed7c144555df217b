"""SimCLR's parts, written out (Chen et al. 2020): the NT-Xent loss, the pair of augmented
views, the projection head, and the LARS optimiser.

NT-Xent: for N pairs, the 2N embeddings are L2-normalised; each embedding's positive is the
other view of its image and its negatives are the other 2N - 2 embeddings; the loss is the
cross-entropy of the positive among all 2N - 1 candidates at temperature tau, averaged over
both directions of every pair.
"""

import torch
import torch.nn.functional as F
from torch import nn


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.5
            ) -> tuple[torch.Tensor, torch.Tensor]:
    """The loss for views `z1[i]`, `z2[i]` of image i, and the share of embeddings whose
    most similar candidate is their positive (positive-pair accuracy)."""
    z = F.normalize(torch.cat([z1, z2]).float(), dim=1)  # cosine similarity below
    n = len(z1)
    logits = z @ z.T / temperature
    logits.fill_diagonal_(float("-inf"))  # an embedding is not its own candidate
    positive = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    loss = F.cross_entropy(logits, positive)
    accuracy = (logits.argmax(1) == positive).float().mean()
    return loss, accuracy


def simclr_augment(image_size: int, blur: bool = True):
    """SimCLR's augmentation of a PIL image to uint8 pixels (`shared.data.normalize` them on
    the device), as in Chen et al. 2020 (appendix A, colour strength 0.5): random-resized
    crop (scale 0.08-1), flip, colour jitter (0.4, 0.4, 0.4, 0.1) with p 0.8, grayscale with
    p 0.2, Gaussian blur (kernel a tenth of the image, odd; sigma 0.1-2) with p 0.5."""
    from torchvision import transforms as T

    kernel = max(3, image_size // 10 | 1)  # odd
    return T.Compose([
        T.RandomResizedCrop(image_size, scale=(0.08, 1.0)),
        T.RandomHorizontalFlip(),
        T.RandomApply([T.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        T.RandomGrayscale(p=0.2),
        *([T.RandomApply([T.GaussianBlur(kernel, (0.1, 2.0))], p=0.5)] if blur else []),
        T.PILToTensor()])


def simclr_views(image_size: int, blur: bool = True):
    """A transform returning two independent `simclr_augment` views of a PIL image."""
    augment = simclr_augment(image_size, blur)

    def two_views(image):
        return augment(image), augment(image)
    return two_views


class ProjectionHead(nn.Module):
    """The two-layer MLP between the backbone's features and the loss (discarded after
    pre-training): Linear, BatchNorm, ReLU, Linear."""

    def __init__(self, in_features: int, hidden: int = 2048, out_features: int = 128):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_features, hidden), nn.BatchNorm1d(hidden),
                                 nn.ReLU(inplace=True), nn.Linear(hidden, out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.net(features)


class LARS(torch.optim.Optimizer):
    """LARS (You et al. 2017) as SimCLR uses it: SGD with momentum whose step for each weight
    tensor is scaled by the trust ratio eta * ||w|| / ||g + weight_decay * w|| (1 where
    either norm is 0). A parameter group with `adapt=False` (`lars_groups`: batch norm and
    biases) takes plain momentum steps: no trust ratio, no weight decay.

        v <- momentum * v + lr * trust * (g + weight_decay * w);   w <- w - v
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 eta: float = 1e-3):
        super().__init__(params, {"lr": lr, "momentum": momentum,
                                  "weight_decay": weight_decay, "eta": eta, "adapt": True})

    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        with torch.no_grad():
            for group in self.param_groups:
                for param in group["params"]:
                    if param.grad is not None:
                        self._update(param, group)
        return loss

    def _update(self, param: torch.Tensor, group: dict) -> None:
        grad, rate = param.grad, group["lr"]
        if group["adapt"]:
            grad = grad.add(param, alpha=group["weight_decay"])
            w_norm, g_norm = param.norm(), grad.norm()
            trust = torch.where((w_norm > 0) & (g_norm > 0),
                                group["eta"] * w_norm / g_norm, torch.ones_like(w_norm))
            rate = rate * trust
        state = self.state[param]
        if "velocity" not in state:
            state["velocity"] = torch.zeros_like(param)
        velocity = state["velocity"]
        velocity.mul_(group["momentum"]).add_(grad * rate)
        param.sub_(velocity)


def lars_groups(model: nn.Module) -> list[dict]:
    """LARS's parameter groups: weight matrices and kernels adapted, batch-norm weights and
    biases (every tensor of one dimension) not."""
    adapted = [p for p in model.parameters() if p.requires_grad and p.ndim > 1]
    plain = [p for p in model.parameters() if p.requires_grad and p.ndim <= 1]
    return [{"params": adapted}, {"params": plain, "adapt": False}]
