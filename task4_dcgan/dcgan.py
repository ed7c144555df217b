"""A class-conditional DCGAN, written out (Radford et al. 2016): strided transposed
convolutions up, strided convolutions down, batch norm, ReLU in G and LeakyReLU 0.2 in D, a
tanh output, weights from N(0, 0.02).

The generator takes noise and a label embedding, concatenated. The discriminator is a
projection discriminator (Miyato & Koyama 2018): an unconditional logit plus the inner product
of a label embedding with its pooled features. With `spectral_norm`, every weight of D is
divided by its largest singular value (Miyato et al. 2018, one power iteration a step) and D
has no batch norm, as in SNGAN; `EMA` keeps an exponential moving average of G's weights
(Yazici et al. 2019), the generator that is sampled.
"""

import copy
import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

SIZES = (32, 64, 128)


def _upsamplings(image_size: int) -> int:
    if image_size not in SIZES:
        raise ValueError(f"image size {image_size}: the DCGAN makes {', '.join(map(str, SIZES))}")
    return int(math.log2(image_size)) - 2  # from 4x4


class Generator(nn.Module):
    """(noise (N, z_dim), labels (N,)) -> images (N, 3, S, S) in [-1, 1]."""

    def __init__(self, num_classes: int, image_size: int = 32, z_dim: int = 100,
                 width: int = 64, embed_dim: int = 50):
        super().__init__()
        self.z_dim, self.num_classes, self.image_size = z_dim, num_classes, image_size
        steps = _upsamplings(image_size)
        channels = [width * 2 ** (steps - 1 - i) for i in range(steps)]  # e.g. 256, 128, 64
        self.embed = nn.Embedding(num_classes, embed_dim)
        layers = [nn.ConvTranspose2d(z_dim + embed_dim, channels[0], 4, 1, 0, bias=False),
                  nn.BatchNorm2d(channels[0]), nn.ReLU(True)]  # 1x1 -> 4x4
        for c_in, c_out in zip(channels, channels[1:], strict=False):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=False),
                       nn.BatchNorm2d(c_out), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(channels[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        init_weights(self)

    def forward(self, z: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = torch.cat([z, self.embed(labels)], dim=1)
        return self.net(h[:, :, None, None])


class Discriminator(nn.Module):
    """(images (N, 3, S, S), labels (N,)) -> logits (N,): real (> 0) or generated."""

    def __init__(self, num_classes: int, image_size: int = 32, width: int = 64,
                 spectral_norm: bool = False):
        super().__init__()
        steps = _upsamplings(image_size)
        channels = [width * 2 ** i for i in range(steps)]  # e.g. 64, 128, 256
        layers = [nn.Conv2d(3, channels[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]  # no BN here
        for c_in, c_out in zip(channels, channels[1:], strict=False):
            norm = [] if spectral_norm else [nn.BatchNorm2d(c_out)]
            layers += [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=spectral_norm), *norm,
                       nn.LeakyReLU(0.2, True)]
        self.features = nn.Sequential(*layers)  # -> (N, channels[-1], 4, 4)
        self.logit = nn.Conv2d(channels[-1], 1, 4, 1, 0)
        self.embed = nn.Embedding(num_classes, channels[-1])
        init_weights(self)
        if spectral_norm:
            for m in self.modules():
                if isinstance(m, (nn.Conv2d, nn.Embedding)):
                    parametrize.register_parametrization(m, "weight", SpectralNorm(m.weight))

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        h = self.features(images)
        projection = (self.embed(labels) * h.sum(dim=(2, 3))).sum(dim=1)
        return self.logit(h).flatten() + projection


def init_weights(model: nn.Module) -> None:
    """DCGAN's initialisation: convolutions and embeddings N(0, 0.02), batch norm scale
    N(1, 0.02), biases 0."""
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Embedding)):
            nn.init.normal_(m.weight, 0.0, 0.02)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
        if getattr(m, "bias", None) is not None:
            nn.init.zeros_(m.bias)


class SpectralNorm(nn.Module):
    """A weight divided by an estimate of its largest singular value (the weight seen as a
    matrix, rows = output channels), from one power iteration a training forward pass on a
    persistent vector u (Miyato et al. 2018). In eval mode u stays as it is."""

    def __init__(self, weight: torch.Tensor, eps: float = 1e-12):
        super().__init__()
        self.eps = eps
        u = torch.randn(weight.shape[0])
        self.register_buffer("u", F.normalize(u, dim=0, eps=eps))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        matrix = weight.flatten(1)
        if self.training:
            with torch.no_grad():
                v = F.normalize(matrix.T @ self.u, dim=0, eps=self.eps)
                self.u.copy_(F.normalize(matrix @ v, dim=0, eps=self.eps))
        # clones: the next forward pass (D sees real and generated images before one
        # backward) updates u in place, which the first pass's graph must not see
        u = self.u.clone()
        v = F.normalize(matrix.T @ u, dim=0, eps=self.eps).detach()
        sigma = u @ matrix @ v  # gradients flow through sigma, as in the paper
        return weight / sigma


class EMA:
    """An exponential moving average of a model's weights (and a copy of its buffers, batch
    norm's statistics): after each step, average = decay x average + (1 - decay) x weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval().requires_grad_(False)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for average, current in zip(self.model.parameters(), model.parameters(), strict=True):
            average.lerp_(current, 1 - self.decay)
        for average, current in zip(self.model.buffers(), model.buffers(), strict=True):
            average.copy_(current)
