"""Where the network looks, with hooks (forward hooks for activations, tensor hooks for
gradients), every one removed when its context ends.

    with Hooked(model, ["layer4"]) as hooked: ...         # activations (and gradients)
    grad_cam(model, images, "layer4")                    # (N, h, w) maps in [0, 1]
    grad_cam(model, images, "layer4", plus=True)         # Grad-CAM++
    attention_rollout(vit, images)                       # ViT, on the token grid
    grad_cam(vit, images, "encoder.layers.encoder_layer_11.ln_1")   # ViT tokens -> grid
    deletion_insertion(model, images, maps, target)     # faithfulness without boxes

ViT token maps take their grid from the input's size and the patch size, so they are right
at any input size (popular code assumes 14x14).
"""

import torch
import torch.nn.functional as F
from torch import nn

from shared.models import UsageError  # a ValueError that task scripts print as one line


class Hooked:
    """Records the output of the named modules during a forward pass (and, with
    `gradients=True`, the gradient that reaches each output). The hooks are removed on exit."""

    def __init__(self, model: nn.Module, names: list[str], gradients: bool = False):
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise UsageError(f"no layer named {missing[0]!r}; layers are e.g. "
                             f"{', '.join(list(modules)[1:6])}")
        self.modules = {n: modules[n] for n in names}
        self.gradients, self.handles = gradients, []
        self.activation, self.gradient = {}, {}

    def __enter__(self):
        for name, module in self.modules.items():
            self.handles.append(module.register_forward_hook(self._recorder(name)))
        return self

    def _recorder(self, name):
        def hook(module, inputs, output):
            self.activation[name] = output
            if self.gradients and output.requires_grad:
                output.register_hook(lambda grad: self.gradient.__setitem__(name, grad))
        return hook

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def token_grid(tokens: torch.Tensor, image_hw: tuple[int, int], patch: int) -> torch.Tensor:
    """ViT tokens (N, 1 + h*w, D) -> (N, D, h, w), the class token dropped; h and w come from
    the input's size."""
    h, w = image_hw[0] // patch, image_hw[1] // patch
    if tokens.shape[1] != 1 + h * w:
        raise UsageError(f"{tokens.shape[1]} tokens do not make a {h}x{w} grid plus a class token")
    return tokens[:, 1:].reshape(len(tokens), h, w, -1).permute(0, 3, 1, 2)


def _normalise(maps: torch.Tensor) -> torch.Tensor:
    peak = maps.flatten(1).max(1).values.clamp_min(1e-12)
    return maps / peak[:, None, None]


def grad_cam(model: nn.Module, images: torch.Tensor, layer: str,
             target: torch.Tensor | None = None, plus: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al.) or Grad-CAM++ (Chattopadhay et al.) of `layer` for the
    `target` classes (default: the predicted ones). Returns maps (N, h, w) in [0, 1] and the
    targets."""
    model.eval()
    model.zero_grad(set_to_none=True)
    with Hooked(model, [layer], gradients=True) as hooked, torch.enable_grad():
        logits = model(images)
        target = logits.argmax(1) if target is None else target.to(logits.device)
        logits.gather(1, target[:, None]).sum().backward()
    activation, gradient = hooked.activation[layer].detach(), hooked.gradient.get(layer)
    if activation.ndim == 3:  # ViT tokens
        if plus:  # LayerNorm outputs take both signs: alpha's denominator nears zero
            raise UsageError(f"Grad-CAM++ is ill-posed on ViT tokens ({layer}): use gradcam "
                             "or rollout")
        hw, patch = images.shape[-2:], model.patch_size
        activation = token_grid(activation, hw, patch)
        gradient = None if gradient is None else token_grid(gradient, hw, patch)
    # e.g. a ViT's last block: past it only the class token reaches the head
    if gradient is None or not gradient.any():
        raise UsageError(f"no gradient reaches layer {layer!r}, so its map would be zero "
                         "everywhere; pick a layer before the head reads the features")
    if plus:
        g2, g3 = gradient ** 2, gradient ** 3
        denominator = 2 * g2 + activation.sum((2, 3), keepdim=True) * g3
        alpha = torch.where(gradient != 0, g2 / (denominator + 1e-12), 0.0)
        weights = (alpha * gradient.clamp_min(0)).sum((2, 3))
    else:
        weights = gradient.mean((2, 3))
    cam = F.relu((weights[:, :, None, None] * activation).sum(1))
    model.zero_grad(set_to_none=True)
    return _normalise(cam), target.cpu()


@torch.no_grad()
def attention_rollout(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Attention rollout (Abnar & Zuidema) of a torchvision ViT: each block's head-averaged
    attention, with the residual as 0.5 I, multiplied through the blocks; the class token's
    row over the patch grid. Attention is recomputed from each block's attention input, caught
    by a forward hook (torchvision asks its attention for no weights)."""
    model.eval()
    blocks = [n for n, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)]
    with Hooked(model, [n.rsplit(".", 1)[0] + ".ln_1" for n in blocks]) as hooked:
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
    return _normalise(rollout[:, 0, 1:].reshape(n, h, w))


@torch.no_grad()
def feature_maps(model: nn.Module, images: torch.Tensor, layers: list[str]) -> dict:
    """The output of each named layer for `images` (the seed's per-channel figure)."""
    model.eval()
    with Hooked(model, layers) as hooked:
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


@torch.no_grad()
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
    n, _, h, w = images.shape
    full = F.interpolate(maps[:, None].float(), size=(h, w), mode="bilinear",
                         align_corners=False)[:, 0].flatten(1)
    rank = torch.empty_like(full, dtype=torch.long)  # 0 = the most salient pixel
    rank.scatter_(1, full.argsort(dim=1, descending=True, stable=True),
                  torch.arange(h * w, device=images.device).expand(n, -1))
    rank = rank.view(n, 1, h, w)
    blank = images.mean((2, 3), keepdim=True).expand_as(images)
    target = target.to(images.device)
    curves = []
    for step in range(steps + 1):
        shown = rank < round(step * h * w / steps)
        batch = torch.cat([torch.where(shown, blank, images),   # deletion
                           torch.where(shown, images, blank)])  # insertion
        with torch.autocast(images.device.type, amp_dtype, enabled=amp_dtype is not None):
            logits = model(batch)
        curves.append(logits.float().softmax(1).gather(1, target.repeat(2)[:, None])[:, 0])
    curves = torch.stack(curves, dim=1)  # (2n, steps + 1)
    auc = torch.trapezoid(curves, dx=1 / steps, dim=1)
    return auc[:n].cpu(), auc[n:].cpu()
