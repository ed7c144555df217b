"""Where the network looks: attention rollout, feature maps, baseline maps and deletion /
insertion faithfulness, all hook-based. Grad-CAM and Grad-CAM++ live in `shared.cam`, which
task 3 also uses for its boxes; they are imported here so that this module has every method.

    with Hooked(model, ["layer4"]) as hooked: ...         # activations (and gradients)
    grad_cam(model, images, "layer4")                    # (N, h, w) maps in [0, 1]
    grad_cam(model, images, "layer4", plus=True)         # Grad-CAM++
    attention_rollout(vit, images)                       # ViT, on the token grid
    grad_cam(vit, images, "encoder.layers.encoder_layer_11.ln_1")   # ViT tokens -> grid
    deletion_insertion(model, images, maps, target)     # faithfulness without boxes
"""

import torch
import torch.nn.functional as F
from torch import nn

from shared.cam import Hooked, grad_cam, normalise, token_grid  # noqa: F401  (re-exported)


def attention_rollout(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema) of a torchvision ViT: each block's head-averaged
    attention, with the residual as 0.5 I, multiplied through the blocks; the class token's
    row over the patch grid. Attention is recomputed from each block's attention input, caught
    by a forward hook (torchvision asks its attention for no weights)."""
    model.eval()
    blocks = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    with Hooked(model, [n.rsplit(".", 1)[0] + ".ln_1" for n in blocks]) as hooked, \
            torch.no_grad():
        model(images)
        modules = dict(model.named_modules())
        rollout = None
        for name in blocks:
            attention_module = modules[name]
            x = hooked.activation[name.rsplit(".", 1)[0] + ".ln_1"]
            n, t, d = x.shape
            heads = attention_module.num_heads
            q, k, _ = F.linear(x, attention_module.in_proj_weight,
                               attention_module.in_proj_bias).chunk(3, dim=-1)
            q = q.reshape(n, t, heads, d // heads).transpose(1, 2)
            k = k.reshape(n, t, heads, d // heads).transpose(1, 2)
            attention = (q @ k.transpose(-2, -1) / (d // heads) ** 0.5).softmax(-1).mean(1)
            attention = 0.5 * attention + 0.5 * torch.eye(t, device=x.device)
            attention = attention / attention.sum(-1, keepdim=True)
            rollout = attention if rollout is None else attention @ rollout
    h, w = images.shape[-2] // model.patch_size, images.shape[-1] // model.patch_size
    return normalise(rollout[:, 0, 1:].reshape(n, h, w))


def feature_maps(model: nn.Module, images: torch.Tensor, layers: list[str]) -> dict:
    """The output of each named layer for `images` (the seed's per-channel figure)."""
    model.eval()
    with Hooked(model, layers) as hooked, torch.no_grad():
        model(images)
    return {name: hooked.activation[name].detach() for name in layers}


def random_map(images: torch.Tensor, grid: int = 7, seed: int = 0) -> torch.Tensor:
    """A baseline: uniform noise on a `grid` x `grid` map per image, seeded."""
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(len(images), grid, grid, generator=generator).to(images.device)


def centre_map(images: torch.Tensor, grid: int = 15) -> torch.Tensor:
    """A baseline: a Gaussian bump at the centre of the frame (sigma a quarter of it)."""
    axis = (torch.arange(grid, device=images.device) + 0.5) / grid - 0.5
    bump = torch.exp(-(axis[:, None] ** 2 + axis[None, :] ** 2) / (2 * 0.25 ** 2))
    return bump.expand(len(images), grid, grid)


def deletion_insertion(model: nn.Module, images: torch.Tensor, maps: torch.Tensor,
                       target: torch.Tensor, steps: int = 20, amp_dtype=None
                       ) -> tuple[torch.Tensor, torch.Tensor]:
    """Deletion and insertion (Petsiuk et al. 2018): the map's pixels, most salient first,
    are set to the photo's mean colour in `steps` equal shares (deletion), or put back one
    share at a time onto a canvas of that colour (insertion), and the probability of
    `target` is read after each. Returns each image's area under both curves (trapezoid over
    the share 0..1): a faithful map gives a low deletion and a high insertion AUC. The mean
    colour rather than a blur: a blurred patch keeps its colour, which is all some classes
    differ in."""
    model.eval()
    with torch.inference_mode():
        n, _, h, w = images.shape
        full = F.interpolate(maps[:, None].float(), size=(h, w), mode="bilinear",
                             align_corners=False)[:, 0].flatten(1)
        rank = torch.empty_like(full, dtype=torch.long)  # 0 = the most salient pixel
        rank.scatter_(1, full.argsort(dim=1, descending=True, stable=True),
                      torch.arange(h * w, device=images.device).expand(n, -1))
        rank = rank.view(n, 1, h, w)
        blank = images.mean((2, 3), keepdim=True).expand_as(images)
        target = target.to(images.device)
        deletion, insertion = [], []
        for step in range(steps + 1):
            shown = rank < round(step * h * w / steps)
            for curve, batch in ((deletion, torch.where(shown, blank, images)),
                                 (insertion, torch.where(shown, images, blank))):
                with torch.autocast(images.device.type, amp_dtype, enabled=amp_dtype is not None):
                    logits = model(batch)  # n images a pass: the caller's (evaluation) batch
                curve.append(logits.float().softmax(1).gather(1, target[:, None])[:, 0])
        return tuple(torch.trapezoid(torch.stack(curve, dim=1), dx=1 / steps, dim=1).cpu()
                     for curve in (deletion, insertion))
