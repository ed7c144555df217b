import urllib.error

import pytest
import torch
from conftest import run_cli

from shared import models
from shared.errors import CheckpointError, WeightsError
from shared.models import build_model, freeze_stages


def test_heads_are_sized_to_the_dataset():
    for name in ("resnet18", "vit_tiny", "tf_efficientnet_lite0"):
        model, _ = build_model(name, 7, weights="none", image_size=32)
        assert model(torch.randn(2, 3, 32, 32)).shape == (2, 7)


def test_lite0_weights_load_strictly_and_see_a_cat():
    skimage_data = pytest.importorskip("skimage.data")
    from PIL import Image

    from shared.data import build_transform

    state = models.imagenet_state("tf_efficientnet_lite0")
    model, spec = build_model("tf_efficientnet_lite0", 1000, weights="none")
    model.load_state_dict(state, strict=True)  # every renamed key fits, none left over
    model.eval()
    photo = Image.fromarray(skimage_data.chelsea())
    x = build_transform(False, 224, "center-crop", normalization=(spec.mean, spec.std))(photo)
    top3 = set(model(x[None]).topk(3).indices[0].tolist())
    assert top3 <= {281, 282, 283, 284, 285, 287}  # tabby, tiger cat, ..., Egyptian cat, lynx
    assert model(x[None]).argmax().item() in {281, 282, 285}


def test_lite0_key_renaming():
    assert models.lite0_key("_blocks.0._depthwise_conv.weight") == "blocks.0.0.conv_dw.weight"
    assert models.lite0_key("_blocks.4._bn1.weight") == "blocks.2.1.bn2.weight"
    assert models.lite0_key("_blocks.15._project_conv.weight") == "blocks.6.0.conv_pwl.weight"
    assert models.lite0_key("_fc.bias") == "classifier.bias"


def test_offline_imagenet_weights_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FGVC_OFFLINE", "1")
    with pytest.raises(WeightsError) as error:
        build_model("resnext101_32x8d", 10, weights="imagenet")
    assert "resnext101_32x8d-110c445d.pth" in str(error.value)
    assert str(tmp_path / "hub" / "checkpoints") in str(error.value)


def test_failed_download_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.delenv("FGVC_OFFLINE", raising=False)

    def no_network(*args, **kwargs):
        raise urllib.error.URLError("no route to host")

    monkeypatch.setattr(torch.hub, "download_url_to_file", no_network)
    with pytest.raises(WeightsError, match=r"put resnet18-f37072fd\.pth .*download failed"):
        build_model("resnet18", 10, weights="imagenet")


def test_offline_error_from_the_command_line(sample, tmp_path):
    root, _ = sample
    result = run_cli("task1_2_finetune/train.py", "--dataset", "bird", "--data-root", str(root),
                     "--model", "resnext101_32x8d", "--weights", "imagenet",
                     "--out", str(tmp_path / "run"),
                     env_extra={"TORCH_HOME": str(tmp_path), "FGVC_OFFLINE": "1"})
    assert result.returncode != 0
    assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
    assert "resnext101_32x8d-110c445d.pth" in result.stderr


def test_cached_weights_are_used_without_download(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("FGVC_OFFLINE", "1")
    reference, _ = build_model("resnet18", 1000, weights="none")
    (tmp_path / "hub" / "checkpoints").mkdir(parents=True)
    torch.save(reference.state_dict(), tmp_path / "hub" / "checkpoints" / "resnet18-f37072fd.pth")
    model, _ = build_model("resnet18", 5, weights="imagenet")
    assert torch.equal(model.conv1.weight, reference.conv1.weight)
    assert torch.equal(model.layer4[1].bn2.running_var, reference.layer4[1].bn2.running_var)
    assert model.fc.out_features == 5


def test_weights_file_keeps_a_head_that_fits(tmp_path):
    trained, _ = build_model("resnet18", 5, weights="none")
    torch.save({"model": trained.state_dict()}, tmp_path / "best.pt")
    model, _ = build_model("resnet18", 5, weights=str(tmp_path / "best.pt"))
    x = torch.randn(2, 3, 32, 32)
    assert torch.equal(model.eval()(x), trained.eval()(x))


def test_weights_that_do_not_fit_are_an_error(tmp_path):
    other, _ = build_model("vit_tiny", 5, weights="none", image_size=32)
    torch.save(other.state_dict(), tmp_path / "vit.pth")
    with pytest.raises(WeightsError, match="vit.pth does not fit resnet18"):
        build_model("resnet18", 5, weights=str(tmp_path / "vit.pth"))
    (tmp_path / "notes.txt").write_text("not weights")
    with pytest.raises(CheckpointError, match="notes.txt is truncated or not a PyTorch file"):
        build_model("resnet18", 5, weights=str(tmp_path / "notes.txt"))
    with pytest.raises(WeightsError, match="no such file"):
        build_model("resnet18", 5, weights=str(tmp_path / "missing.pth"))


def test_vit_weights_load_at_another_input_size(tmp_path):
    small, _ = build_model("vit_tiny", 5, weights="none", image_size=32)
    torch.save(small.state_dict(), tmp_path / "vit.pth")
    large, _ = build_model("vit_tiny", 5, weights=str(tmp_path / "vit.pth"), image_size=48)
    assert large.encoder.pos_embedding.shape == (1, 1 + 6 * 6, 64)
    assert torch.equal(large.conv_proj.weight, small.conv_proj.weight)
    assert large(torch.randn(1, 3, 48, 48)).shape == (1, 5)


@pytest.mark.parametrize("count, trainable_first", [(2, "layer2."), (-3, "layer2."),
                                                    (0, "conv1.")])
def test_freeze_stages(count, trainable_first):
    model, spec = build_model("resnet18", 5, weights="none")
    frozen = freeze_stages(model, spec, count)
    first = next(n for n, p in model.named_parameters() if p.requires_grad)
    assert first.startswith(trainable_first)
    assert ("layer1.0.bn1" in frozen) == (count != 0)
    assert model.fc.weight.requires_grad
    with pytest.raises(ValueError, match="--freeze-stages"):
        freeze_stages(model, spec, 6)
