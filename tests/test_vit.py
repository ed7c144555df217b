"""Task 5: ViT builders (SWAG, any input size), layer-wise learning-rate decay, the cost
measures, and the tiny ViT trained through task5_vit/train.py."""


import pytest
import torch
import torchvision
from conftest import assert_predictions_reproduce, run_cli

from shared import engine, models
from shared.errors import UsageError, WeightsError
from shared.models import PackedSelfAttention, build_model
from task5_vit import train as vit_train


@pytest.mark.parametrize("name, published", [("resnet50", 4.09), ("vit_b_16", 17.56),
                                              ("vit_b_32", 4.41)])
def test_flops_match_the_published_figures(name, published):
    # torchvision's tables, in G multiply-adds at 224; the ViTs catch attention left uncounted
    model, _ = build_model(name, 1000, "none")
    assert engine.count_gflops(model, 224, torch.device("cpu")) == pytest.approx(published,
                                                                                abs=0.03)


def test_position_embeddings_are_interpolated_and_exact_at_the_original_size(tmp_path):
    torch.manual_seed(0)
    original, _ = build_model("vit_tiny", 5, "none", image_size=32)
    original.eval()
    torch.save({"model": original.state_dict()}, tmp_path / "vit.pt")
    x = torch.randn(2, 3, 32, 32)

    same, _ = build_model("vit_tiny", 5, str(tmp_path / "vit.pt"), image_size=32)
    torch.testing.assert_close(same.eval()(x), original(x), rtol=0, atol=0)

    larger, _ = build_model("vit_tiny", 5, str(tmp_path / "vit.pt"), image_size=64)
    assert larger.encoder.pos_embedding.shape == (1, 1 + (64 // 8) ** 2, 64)
    # the class token's embedding is carried over unchanged, the grid is resampled
    torch.testing.assert_close(larger.encoder.pos_embedding[:, :1],
                               original.encoder.pos_embedding[:, :1])
    assert larger.eval()(torch.randn(2, 3, 64, 64)).shape == (2, 5)


def test_swag_vit_is_a_vit_b_16_at_384_with_its_own_weights_file(tmp_path, monkeypatch):
    model, model_spec = build_model("vit_b_16_swag", 7, "none", image_size=384)
    assert model.image_size == 384 and model.patch_size == 16 and not model_spec.is_cnn
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FGVC_OFFLINE", "1")
    with pytest.raises(WeightsError, match=r"put vit_b_16_swag-9ac1b537\.pth"):
        models.imagenet_state("vit_b_16_swag")


def test_layer_decay_slows_the_early_stages():
    model, model_spec = build_model("vit_tiny", 5, "none", image_size=32)
    groups = engine.param_groups(model, model_spec, lr=1.0, head_lr_mult=10.0,
                                 weight_decay=0.05, layer_decay=0.5)
    depth = len(model_spec.stages)  # stem, 2 encoder layers, final norm
    lr_of = {id(p): g["lr"] for g in groups for p in g["params"]}
    decay_of = {id(p): g["weight_decay"] for g in groups for p in g["params"]}
    named = dict(model.named_parameters())
    assert lr_of[id(named["heads.head.weight"])] == 10.0
    assert lr_of[id(named["encoder.ln.weight"])] == 0.5
    assert lr_of[id(named["encoder.layers.encoder_layer_1.mlp.0.weight"])] == 0.25
    assert lr_of[id(named["conv_proj.weight"])] == 0.5 ** depth
    assert decay_of[id(named["conv_proj.weight"])] == 0.05
    assert decay_of[id(named["conv_proj.bias"])] == 0.0
    assert sum(len(g["params"]) for g in groups) == len(named)


def test_recipe_follows_the_model_and_drop_path_needs_a_model_that_has_it():
    assert vit_train.parse_args(["--model", "vit_b_32"]).recipe == "vit"
    args = vit_train.parse_args(["--model", "resnext101_32x8d"])
    assert args.recipe == "strong" and args.optimizer == "adamw" and args.layer_decay == 1.0
    args = vit_train.parse_args(["--model", "vit_b_16_swag"])
    assert args.image_size == 384 and args.layer_decay == 0.75
    assert vit_train.parse_args(["--model", "vit_b_16", "--image-size", "160"]).image_size == 160
    # by the model's kind, not its name: a timm ViT, DeiT or Swin gets the ViT recipe
    for name in ("timm/vit_tiny_patch16_224", "timm/deit_tiny_patch16_224", "swin_t"):
        assert vit_train.parse_args(["--model", name]).recipe == "vit", name
    for name in ("timm/convnext_atto", "regnet_x_400mf", "resnet18"):
        assert vit_train.parse_args(["--model", name]).recipe == "strong", name
    forced = vit_train.parse_args(["--model", "timm/convnext_atto", "--recipe", "vit"])
    assert forced.recipe == "vit"
    with pytest.raises(UsageError, match="--drop-path: vit_b_16 has no stochastic depth"):
        build_model("vit_b_16", 5, "none", drop_path=0.1)
    model, _ = build_model("tf_efficientnet_lite0", 5, "none", drop_path=0.1)
    assert model.blocks[-1][0].drop_path.drop_prob == pytest.approx(0.1 * 15 / 16)


def test_tiny_vit_trains_and_records_its_cost(sample, tmp_path):
    root, _ = sample
    out = tmp_path / "vit_tiny"
    result = run_cli("task5_vit/train.py", "--dataset", "dog", "--data-root", str(root),
                     "--model", "vit_tiny", "--weights", "none", "--image-size", "32",
                     "--epochs", "4", "--batch-size", "8", "--warmup-epochs", "1",
                     "--lr", "1e-3", "--val-fraction", "0.25", "--out", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    record = assert_predictions_reproduce(out)
    assert record["task"] == "task5_vit" and record["variant"] == "vit_tiny"
    assert record["args"]["recipe"] == "vit" and record["args"]["layer_decay"] == 0.75
    losses = [h["train_loss"] for h in record["history"]]
    assert losses[-1] < losses[0]
    metrics = record["metrics"]
    model, _ = build_model("vit_tiny", 4, "none", image_size=32)
    assert metrics["params_m"] == pytest.approx(sum(p.numel() for p in model.parameters()) / 1e6)
    assert metrics["gflops"] == pytest.approx(engine.count_gflops(model, 32, torch.device("cpu")))
    for key in ("train_images_per_s", "infer_images_per_s", "peak_mem_mb", "train_seconds"):
        assert metrics[key] > 0


@pytest.mark.parametrize("training", [True, False])
def test_packed_attention_matches_torchvision_attention(training):
    # build_model's ViTs compute attention batch-first (PackedSelfAttention, same parameters);
    # outputs and every gradient must be torchvision's own, in training and in evaluation.
    torch.manual_seed(0)
    ours, _ = build_model("vit_tiny", 5, weights="none", image_size=32)
    theirs = torchvision.models.vision_transformer.VisionTransformer(
        image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=64, mlp_dim=128,
        num_classes=5)
    assert all(type(block.self_attention) is PackedSelfAttention for block in ours.encoder.layers)
    assert list(theirs.state_dict()) == list(ours.state_dict())
    torch.nn.init.normal_(ours.heads.head.weight)  # torchvision's zero head would hide all
    theirs.load_state_dict(ours.state_dict())
    images = torch.randn(3, 3, 32, 32)
    outputs = []
    for model in (ours, theirs):
        model.train(training)
        with torch.set_grad_enabled(training):
            out = model(images)
        if training:
            out.square().sum().backward()
        outputs.append(out.detach())
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)
    if training:
        for (name, a), b in zip(ours.named_parameters(), theirs.parameters(), strict=True):
            scale = b.grad.abs().max().item()  # summation order differs: relative to the size
            torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5 * scale, msg=name)
