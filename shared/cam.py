"""Class activation maps with hooks, for task 3 (boxes from a classifier's attention) and task
6 (heatmaps), and the box of a map: forward hooks record activations, tensor hooks their
gradients, every one removed when its context ends.

    with Hooked(model, ["layer4"]) as hooked: ...         # activations (and gradients)
    grad_cam(model, images, "layer4")                    # (N, h, w) maps in [0, 1]
    grad_cam(model, images, "layer4", plus=True)         # Grad-CAM++
    grad_cam(vit, images, "encoder.layers.encoder_layer_11.ln_1")   # ViT tokens -> grid
    map_boxes(maps, (0.2, 0.5), size)                    # the box of each map's largest region

ViT token maps take their grid from the input's size and the patch size, so they are right
at any input size (popular code assumes 14x14).
"""

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer

from shared.errors import UsageError
from shared.models import MODELS, ModelSpec, token_layout


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
        # the tensor hook holds the gradient dict, not self: self holds the output, and a
        # cycle through a tensor's hook is never freed, nor the graph behind it (1.2 GB a
        # batch of lite0 Grad-CAM, whose backward stops at the layer and frees none of it)
        gradient = self.gradient

        def hook(module, inputs, output):
            self.activation[name] = output
            if self.gradients and output.requires_grad:
                output.register_hook(lambda grad: gradient.__setitem__(name, grad))
        return hook

    def __exit__(self, *exc):
        for handle in self.handles:
            handle.remove()
        self.handles.clear()


def token_grid(tokens: torch.Tensor, image_hw: tuple[int, int], patch: int,
               prefix: int = 1) -> torch.Tensor:
    """ViT tokens (N, prefix + h*w, D) -> (N, D, h, w), the `prefix` tokens (class,
    distillation, registers) dropped; h and w come from the input's size."""
    h, w = image_hw[0] // patch, image_hw[1] // patch
    if tokens.shape[1] != prefix + h * w:
        raise UsageError(f"{tokens.shape[1]} tokens do not make a {h}x{w} grid plus {prefix} "
                         f"prefix token(s)")
    return tokens[:, prefix:].reshape(len(tokens), h, w, -1).permute(0, 3, 1, 2)


def normalise(maps: torch.Tensor) -> torch.Tensor:
    peak = maps.flatten(1).max(1).values.clamp_min(1e-12)
    return maps / peak[:, None, None]


def grad_cam(model: nn.Module, images: torch.Tensor, layer: str,
             target: torch.Tensor | None = None, plus: bool = False
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Grad-CAM (Selvaraju et al.) or Grad-CAM++ (Chattopadhay et al.) of `layer` for the
    `target` classes (default: the predicted ones). Returns maps (N, h, w) in [0, 1] and the
    targets."""
    model.eval()
    model.zero_grad(set_to_none=True)  # frees what training left; autograd.grad adds none
    # an input that asks for gradients: the layer's output joins the graph even when every
    # weight before it is frozen
    images = images.detach().requires_grad_()
    with Hooked(model, [layer], gradients=True) as hooked, torch.enable_grad():
        logits = model(images)
        target = logits.argmax(1) if target is None else target.to(logits.device)
        activation = hooked.activation[layer]
        if activation.requires_grad:  # only the layer's gradient: the backward pass stops
            # there and computes no parameter's (10x faster than .backward(); docs/speed.md)
            torch.autograd.grad(logits.gather(1, target[:, None]).sum(), activation,
                                allow_unused=True)
    activation, gradient = activation.detach(), hooked.gradient.get(layer)
    if activation.ndim == 3:  # ViT tokens
        if plus:  # LayerNorm outputs take both signs: alpha's denominator nears zero
            raise UsageError(f"Grad-CAM++ is ill-posed on ViT tokens ({layer}): use gradcam "
                             "or rollout")
        hw, (patch, prefix) = images.shape[-2:], token_layout(model)
        activation = token_grid(activation, hw, patch, prefix)
        gradient = None if gradient is None else token_grid(gradient, hw, patch, prefix)
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
    return normalise(cam), target.cpu()


def default_layer(spec: ModelSpec, model: nn.Module) -> str:
    """The layer a CAM reads by default: a CNN's last stage (lite0: conv_head, the features
    its pooling and linear head see, so Grad-CAM there is CAM up to a positive scale; a timm
    CNN: its last feature stage); for a ViT, the last block's input norm: past the last block
    only the class token reaches the head, so the patch tokens there get no gradient; for
    torchvision's Swin, its last stage's map turned channels-first (`permute`)."""
    modules = dict(model.named_modules())
    if isinstance(model, VisionTransformer):
        return f"encoder.layers.{list(dict(model.encoder.layers.named_children()))[-1]}.ln_1"
    if hasattr(model, "patch_embed") and hasattr(model, "blocks"):  # a timm ViT
        return f"blocks.{len(model.blocks) - 1}.norm1"
    if "permute" in modules and not spec.is_cnn:  # torchvision's Swin: (N, H, W, C) before it
        return "permute"
    if not spec.is_cnn:
        raise UsageError(f"{spec.name}: no default layer for its maps; name one with --layer")
    feature_info = getattr(model, "feature_info", None)
    if spec.name not in MODELS and feature_info:  # timm: its last feature stage
        return feature_info[-1]["module"]
    # the last stage outside the head's module (ConvNeXt's norm of the pooled features is
    # in it); lite0: conv_head
    head = (spec.head if isinstance(spec.head, str) else spec.head[0]).split(".")[0]
    last = next(stage for stage in reversed(spec.stages) if not stage[0].startswith(f"{head}."))
    return last[0].rstrip(".")


def map_boxes(maps: torch.Tensor, thresholds, size: int) -> list[dict]:
    """For each map (N, h, w), upsampled to the `size` x `size` input frame: for every
    threshold t, the box (x0, y0, x1, y1, frame pixels) around the largest connected region
    where the map is at least t times its maximum (8-connected), as CAM localisation does
    (Zhou et al. 2016; Choe et al. 2020). A map that is zero everywhere has no region: its
    box is the whole frame."""
    from scipy import ndimage

    full = F.interpolate(maps[:, None].float(), size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0].cpu().numpy()
    eight = np.ones((3, 3), dtype=bool)
    found = []
    for heat in full:
        peak = heat.max()
        boxes = {}
        for t in thresholds:
            if peak <= 0:
                boxes[t] = (0.0, 0.0, float(size), float(size))
                continue
            regions, count = ndimage.label(heat >= t * peak, structure=eight)
            largest = 1 + int(np.bincount(regions.ravel(), minlength=count + 1)[1:].argmax())
            rows, cols = ndimage.find_objects(regions, max_label=largest)[-1]  # its bounds
            boxes[t] = (float(cols.start), float(rows.start), float(cols.stop),
                        float(rows.stop))
        found.append(boxes)
    return found
