"""Any backbone by name: a representative set of torchvision and timm models (random
weights, no network) through what the tasks need of a model."""

import json

import pytest
import torch
import torchvision
from conftest import run_cli
from fgsm import Normalized, fgsm

from shared import cam, engine, errors, models
from shared.errors import WeightsError
from shared.models import build_model, freeze_stages

# name, input size, the last stage's grid at that size
REPRESENTATIVE = [
    ("resnet18", 64, 2), ("convnext_tiny", 64, 2), ("efficientnet_b0", 64, 2),
    ("mobilenet_v3_small", 64, 2), ("vit_b_16", 64, 4), ("swin_t", 64, 2),
    ("timm/vit_small_patch14_reg4_dinov2", 56, 4),  # 4 register tokens besides the class's
    ("timm/deit_tiny_distilled_patch16_224", 64, 4),  # a class and a distillation token
    ("timm/convnext_atto", 64, 2),
    ("tf_efficientnet_lite0", 64, 2), ("tf_efficientnet_lite1", 64, 2),
    ("tf_efficientnet_lite2", 64, 2),
]


@pytest.mark.parametrize("name, size, grid", REPRESENTATIVE)
def test_every_task_can_use_the_model(name, size, grid):
    torch.manual_seed(0)
    model, spec = build_model(name, 5, "none", size)
    for key, param in model.named_parameters():  # torchvision's ViT head starts at zero
        if key.startswith(spec.head) and param.ndim > 1:
            torch.nn.init.normal_(param, std=0.01)
    x = torch.rand(4, 3, size, size)
    assert model(x).shape == (4, 5)
    # stages: freezing all but the last two leaves the head and the last stages trainable
    frozen = freeze_stages(model, spec, -2)
    assert frozen and len(spec.stages) >= 3
    trainable = {k for k, p in model.named_parameters() if p.requires_grad}
    assert all(k.startswith(spec.head) or k.startswith(spec.stages[-1] + spec.stages[-2])
               for k in trainable)
    assert any(k.startswith(spec.head) for k in trainable)
    # layer decay: the head learns fastest, each stage below it slower
    groups = engine.param_groups(model, spec, 1e-3, 10.0, 0.05, layer_decay=0.5)
    rates = sorted({g["lr"] for g in groups})
    assert rates[-1] == pytest.approx(1e-2) and len(rates) >= 3
    # one training step moves the trainable weights, not the frozen ones
    before = {k: v.detach().clone() for k, v in model.named_parameters()}
    optimizer = torch.optim.AdamW(groups, lr=1e-3)
    model.train()
    torch.nn.functional.cross_entropy(model(x), torch.arange(4) % 5).backward()
    optimizer.step()
    after = dict(model.named_parameters())
    assert all(torch.equal(before[k], after[k]) for k in before if k not in trainable)
    assert any(not torch.equal(before[k], after[k]) for k in trainable)
    # a Grad-CAM map on the last stage's grid, at this input size
    layer = cam.default_layer(spec, model)
    maps, _ = cam.grad_cam(model, x, layer)
    assert maps.shape == (4, grid, grid) and torch.isfinite(maps).all()
    # an FGSM step on [0, 1] pixels, within its budget
    attacked = Normalized(model.eval(), spec.mean, spec.std)
    pixels = torch.rand(2, 3, size, size)
    adversarial = fgsm(attacked, pixels, torch.tensor([0, 1]), 4)
    assert 0 < (adversarial - pixels).abs().max() <= 4 / 255 + 1e-6


@pytest.mark.parametrize("name", ["tf_efficientnet_lite1", "tf_efficientnet_lite2"])
def test_lite1_and_lite2_weights_load_strictly_and_see_a_cat(name):
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from shared.data import build_transform

    state = models.imagenet_state(name)
    model, spec = build_model(name, 1000, weights="none")
    model.load_state_dict(state, strict=True)  # every renamed key fits, none left over
    photo = Image.fromarray(skimage_data.chelsea())
    x = build_transform(False, 240, "center-crop", normalization=(spec.mean, spec.std))(photo)
    top3 = set(model.eval()(x[None]).topk(3).indices[0].tolist())
    assert top3 <= {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, ..., Egyptian cat, lynx


def test_normalisation_and_heads_come_from_the_model():
    _, timm_vit = build_model("timm/vit_small_patch16_224.augreg_in21k", 3, "none", 32)
    assert timm_vit.mean == (0.5, 0.5, 0.5) and timm_vit.head == "head." and not timm_vit.is_cnn
    _, deit = build_model("timm/deit_tiny_distilled_patch16_224", 3, "none", 32)
    assert deit.head == ("head.", "head_dist.")
    _, efficientnet = build_model("efficientnet_b0", 3, "none", 32)
    assert efficientnet.head == "classifier.1." and efficientnet.is_cnn
    assert models.token_layout(build_model("timm/vit_small_patch14_reg4_dinov2", 3, "none",
                                           28)[0]) == (14, 5)


def test_unknown_models_and_offline_weights_say_what_to_do(tmp_path, monkeypatch):
    with pytest.raises(errors.UsageError, match="python -m shared.models list"):
        build_model("resnet19", 3, "none")
    with pytest.raises(errors.UsageError, match="timm has no model 'not_a_net'"):
        build_model("timm/not_a_net", 3, "none")
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.setenv("FGVC_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        build_model("timm/convnext_atto.d2_in1k", 3, "imagenet")
    assert "https://huggingface.co/timm/convnext_atto.d2_in1k" in str(error.value)
    assert str(tmp_path / "hf") in str(error.value)
    with pytest.raises(WeightsError, match=r"convnext_tiny-983f1562\.pth .*hub/checkpoints"):
        build_model("convnext_tiny", 3, "imagenet")
    with pytest.raises(WeightsError, match=r"efficientnet_b0_rwightman-7f5810bc\.pth"):
        build_model("efficientnet_b0", 3, "IMAGENET1K_V1")


def test_the_list_names_each_group_with_sizes():
    lines = models.model_table("*efficientnet_b0*")
    assert lines[0].startswith("# this project's names")
    row = next(line for line in lines if line.startswith("efficientnet_b0 "))
    assert row.split()[1:3] == ["5.3", "224"] and "IMAGENET1K_V1" in row
    assert any(line.startswith("timm/efficientnet_b0.") for line in lines)


def test_the_list_counts_models_the_meta_device_cannot_build():
    # RegNet's constructor reads tensor values: building it on the meta device raised
    # NotImplementedError and stopped `python -m shared.models list`
    lines = models.model_table("regnet_x_400mf")
    row = next(line for line in lines if line.startswith("regnet_x_400mf "))
    real = sum(p.numel() for p in torchvision.models.get_model("regnet_x_400mf").parameters())
    assert row.split()[1] == f"{real / 1e6:.1f}"


def test_default_sizes_come_from_the_weights():
    assert models.default_size("vit_b_16_swag") == 384  # SWAG's end-to-end weights
    assert models.default_size("inception_v3") == 299  # torchvision's DEFAULT transforms
    assert models.default_size("tf_efficientnet_lite2") == 260  # timm's pretrained_cfg
    assert models.default_size("timm/vit_small_patch14_reg4_dinov2") == 518
    assert models.default_size("resnet18") == 224


def test_a_timm_model_trains_from_the_command_line(sample, tmp_path):
    root, _ = sample
    out = tmp_path / "run"
    result = run_cli("task1_2_finetune/train.py", "--dataset", "bird", "--data-root", str(root),
                     "--model", "timm/convnext_atto", "--variant", "baseline", "--weights", "none",
                     "--image-size", "32",
                     "--epochs", "1", "--batch-size", "8", "--freeze-stages", "-3",
                     "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert json.loads((out / "metrics.json").read_text())["model"] == "timm/convnext_atto"
