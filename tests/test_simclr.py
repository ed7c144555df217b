"""Task 8 (in progress): the hand-written NT-Xent loss, the view pair and the projection head."""

import math

import pytest
import torch
from PIL import Image

from task8_simclr.simclr import ProjectionHead, nt_xent, simclr_views


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
    a, b = simclr_views(32, (0.5,) * 3, (0.5,) * 3)(image)
    assert a.shape == b.shape == (3, 32, 32) and not torch.equal(a, b)
    assert ProjectionHead(512, 64, 16)(torch.randn(4, 512)).shape == (4, 16)
