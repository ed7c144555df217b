"""DiffAugment (Zhao et al., NeurIPS 2020), written out: random, differentiable augmentations
applied to every image the discriminator sees, real and generated, in D's step and in G's,
so that D cannot memorise a few real photos and G still gets gradients through them.

    x = diff_augment(x, ("color", "translation", "cutout"))   # images in [-1, 1]

Each image of a call draws its own parameters (from torch's default generator, so a seeded,
resumed run draws the same ones). An empty policy returns `x` itself and draws nothing.

- color: brightness + U(-0.5, 0.5); saturation: distance from the pixel's channel mean
  scaled by U(0, 2); contrast: distance from the image's mean scaled by U(0.5, 1.5). As in
  the paper, no clamp afterwards: a clamp would cut the gradient at every clipped pixel.
- translation: a shift of up to 1/8 of the side in each direction, zeros moved in.
- cutout: a square of half the side, centred anywhere in the image (clipped at its edges),
  set to zero.
"""

import torch
import torch.nn.functional as F

POLICIES = ("color", "translation", "cutout")


def _uniform(x: torch.Tensor, low: float, high: float) -> torch.Tensor:
    """One draw per image, shaped to broadcast over (N, C, H, W)."""
    return torch.rand(len(x), 1, 1, 1, dtype=x.dtype, device=x.device) * (high - low) + low


def color(x: torch.Tensor) -> torch.Tensor:
    x = x + _uniform(x, -0.5, 0.5)
    grey = x.mean(dim=1, keepdim=True)
    x = (x - grey) * _uniform(x, 0.0, 2.0) + grey
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return (x - mean) * _uniform(x, 0.5, 1.5) + mean


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    n, _, h, w = x.shape
    max_y, max_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    dy = torch.randint(-max_y, max_y + 1, (n, 1), device=x.device)
    dx = torch.randint(-max_x, max_x + 1, (n, 1), device=x.device)
    padded = F.pad(x, [max_x, max_x, max_y, max_y])  # zeros where the shift uncovers
    rows = torch.arange(h, device=x.device) + max_y - dy  # output row i reads row i - dy
    cols = torch.arange(w, device=x.device) + max_x - dx
    batch = torch.arange(n, device=x.device)[:, None, None]
    # advanced indices around a slice: the result is (N, H, W, C)
    return padded[batch, :, rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    n, _, h, w = x.shape
    size_y, size_x = int(h * ratio + 0.5), int(w * ratio + 0.5)
    top = torch.randint(0, h, (n, 1), device=x.device) - size_y // 2
    left = torch.randint(0, w, (n, 1), device=x.device) - size_x // 2
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (rows >= top) & (rows < top + size_y)  # (N, H)
    in_cols = (cols >= left) & (cols < left + size_x)  # (N, W)
    keep = ~(in_rows[:, :, None] & in_cols[:, None, :])
    return x * keep[:, None].to(x.dtype)


OPERATIONS = {"color": color, "translation": translation, "cutout": cutout}


def diff_augment(x: torch.Tensor, policy: tuple[str, ...]) -> torch.Tensor:
    for name in policy:
        x = OPERATIONS[name](x)
    return x
