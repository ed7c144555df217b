"""Task 6: hook-based Grad-CAM / Grad-CAM++ / attention rollout, checked against plain
autograd, on a model that learned where the object is, and through the command line."""

import json
import shutil
import weakref

import boxes as boxes_io
import heatmaps
import maps
import numpy as np
import pytest
import torch
from conftest import run_cli
from torch import nn

from shared import cam, stats
from shared.models import build_model
from shared.results import write_tables


def no_hooks(model: nn.Module) -> bool:
    return all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_grad_cam_and_grad_cam_plus_plus_on_a_hand_worked_example():
    """Two channels (sums 10 and 4) through a 1x1 identity convolution, average pooling and
    a linear head whose class 0 weighs them 2 and 1: each gradient is w / 4 (0.5 and 0.25).
    Grad-CAM: 0.5 A0 + 0.25 A1. Grad-CAM++: alpha = g^2 / (2 g^2 + sum(A) g^3) = 1 / (2 +
    sum(A) g), a channel's weight 4 alpha relu(g): 4 x 0.5 / 7 = 2/7 and 4 x 0.25 / 3 = 1/3,
    the map 2/7 A0 + 1/3 A1 = [[34, 12], [18, 24]] / 21. Maps are scaled to a maximum of 1."""
    class Probe(nn.Module):
        def __init__(self):
            super().__init__()
            self.layer = nn.Conv2d(2, 2, 1, bias=False)
            self.head = nn.Linear(2, 2, bias=False)
            with torch.no_grad():
                self.layer.weight.copy_(torch.eye(2)[:, :, None, None])
                self.head.weight.copy_(torch.tensor([[2.0, 1.0], [0.0, 0.0]]))

        def forward(self, x):
            return self.head(self.layer(x).mean((2, 3)))

    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]], [[4.0, 0.0], [0.0, 0.0]]]])
    plain, target = heatmaps.grad_cam(Probe(), x, "layer")
    assert target.tolist() == [0]  # logits 6 and 0
    torch.testing.assert_close(plain, torch.tensor([[[1.5, 1.0], [1.5, 2.0]]]) / 2)
    plus, _ = heatmaps.grad_cam(Probe(), x, "layer", plus=True)
    torch.testing.assert_close(plus, torch.tensor([[[34.0, 12.0], [18.0, 24.0]]]) / 34)
    # class 0 weighing channel 0 by 4: its gradient is exactly 1, alpha 1 / (2 + 10) and the
    # weight 4 / 12; channel 1's stays 1/3: the map (A0 + A1) / 3 = [[5, 2], [3, 4]] / 3
    heavy = Probe()
    with torch.no_grad():
        heavy.head.weight[0, 0] = 4.0
    plus, _ = heatmaps.grad_cam(heavy, x, "layer", plus=True)
    torch.testing.assert_close(plus, torch.tensor([[[5.0, 2.0], [3.0, 4.0]]]) / 5)


def test_grad_cam_equals_plain_autograd_on_the_layer_output():
    torch.manual_seed(0)
    model, _ = build_model("resnet18", 5, "none")
    model.eval()
    x = torch.randn(3, 3, 64, 64)
    ours, target = heatmaps.grad_cam(model, x, "layer4")

    # the same, by hand: run the stages, take d(score)/d(layer4 output) with autograd.grad
    stem = nn.Sequential(model.conv1, model.bn1, model.relu, model.maxpool, model.layer1,
                         model.layer2, model.layer3)
    a = model.layer4(stem(x))
    logits = model.fc(torch.flatten(model.avgpool(a), 1))
    assert torch.equal(logits.argmax(1), target)

    def by_hand(target):
        (g,) = torch.autograd.grad(logits[torch.arange(3), target].sum(), a, retain_graph=True)
        cam = torch.relu((g.mean((2, 3))[:, :, None, None] * a.detach()).sum(1))
        return cam / cam.flatten(1).max(1).values[:, None, None]

    torch.testing.assert_close(ours, by_hand(target))
    assert ours.shape == (3, 2, 2) and no_hooks(model)
    assert all(p.grad is None for p in model.parameters())  # nothing left behind
    other = (target + 1) % 5  # a class it did not predict, asked for
    maps, returned = heatmaps.grad_cam(model, x, "layer4", target=other)
    assert torch.equal(returned, other)
    torch.testing.assert_close(maps, by_hand(other))
    model(x).sum().backward()  # gradients a caller's training left: freed, none added
    heatmaps.grad_cam(model, x, "layer4")
    assert all(p.grad is None for p in model.parameters())
    model.requires_grad_(False)  # a frozen network: the same maps
    torch.testing.assert_close(heatmaps.grad_cam(model, x, "layer4")[0], ours)


def test_grad_cam_frees_its_graph_when_it_returns():
    # its backward stops at the layer, so the graph before it is freed only with the last
    # reference to the layer's output: a cycle through a tensor hook kept it (1.2 GB a batch)
    model, _ = build_model("resnet18", 5, "none")
    outputs = []
    model.layer4.register_forward_hook(lambda m, i, output: outputs.append(weakref.ref(output)))
    heatmaps.grad_cam(model, torch.randn(2, 3, 64, 64), "layer4")
    assert outputs and outputs[0]() is None  # no gc.collect(): freed as the call returns


def test_hooks_are_removed_even_when_the_forward_fails():
    model, _ = build_model("resnet18", 5, "none")
    with pytest.raises(RuntimeError), heatmaps.Hooked(model, ["layer4", "layer3"], True):
        model(torch.randn(1, 1, 32, 32))  # wrong channel count
    assert no_hooks(model)
    with pytest.raises(ValueError, match="^no layer named 'layer9'; layers are e.g. conv1, "
                                         "bn1, relu, maxpool, layer1$"):
        heatmaps.Hooked(model, ["layer9"])


def test_hooks_record_gradients_only_when_asked():
    model = nn.Sequential(nn.Linear(3, 2), nn.Linear(2, 1))
    x = torch.randn(4, 3)
    for asked in (False, True):
        with heatmaps.Hooked(model, ["0"], gradients=asked) as hooked:
            model(x).sum().backward()
        assert list(hooked.gradient) == (["0"] if asked else [])
    with heatmaps.Hooked(model, ["0"]) as hooked:  # the default: outputs only
        model(x).sum().backward()
    assert "0" in hooked.activation and hooked.gradient == {}


@pytest.mark.parametrize("size", [32, 64])
def test_vit_maps_follow_the_input_size(size):
    torch.manual_seed(0)
    model, vit_spec = build_model("vit_tiny", 5, "none", image_size=size)
    nn.init.normal_(model.heads.head.weight)  # torchvision starts it at zero: no gradient
    x = torch.randn(2, 3, size, size)
    grid = size // 8
    rollout = heatmaps.attention_rollout(model, x)
    maps, _ = heatmaps.grad_cam(model, x, cam.default_layer(vit_spec, model))
    assert rollout.shape == maps.shape == (2, grid, grid)
    assert maps.flatten(1).max(1).values.tolist() == [1.0, 1.0]  # the tokens got gradient
    assert rollout.min() >= 0 and rollout.max() == pytest.approx(1.0)
    assert no_hooks(model)
    with pytest.raises(ValueError, match="do not make a 3x3 grid"):
        heatmaps.token_grid(torch.zeros(1, 1 + grid * grid, 4), (24, 24), 8)


def test_attention_rollout_multiplies_the_library_attention_through_the_blocks():
    """Rollout (Abnar & Zuidema) by its definition, from nn.MultiheadAttention's own
    head-averaged weights (need_weights=True, the library's path) instead of the q and k
    attention_rollout recomputes: each block 0.5 A + 0.5 I, multiplied from the first block
    on; the class token's row over the 4 x 4 grid, scaled to a peak of 1."""
    torch.manual_seed(0)
    model, _ = build_model("vit_tiny", 5, "none", image_size=32)
    model.eval()
    x = torch.randn(2, 3, 32, 32)
    modules = dict(model.named_modules())
    blocks = [n for n, m in modules.items() if isinstance(m, nn.MultiheadAttention)]
    for name in blocks:  # torchvision starts the q, k, v biases at zero
        nn.init.normal_(modules[name].in_proj_bias)
    with heatmaps.Hooked(model, [n.rsplit(".", 1)[0] + ".ln_1" for n in blocks]) as hooked, \
            torch.no_grad():
        model(x)
        expected = torch.eye(17)
        for name in blocks:
            tokens = hooked.activation[name.rsplit(".", 1)[0] + ".ln_1"]
            _, weights = modules[name](tokens, tokens, tokens, need_weights=True)
            expected = (0.5 * weights + 0.5 * torch.eye(17)) @ expected
    expected = expected[:, 0, 1:].reshape(2, 4, 4)
    expected = expected / expected.amax((1, 2), keepdim=True)
    torch.testing.assert_close(heatmaps.attention_rollout(model, x), expected)


def test_a_trained_model_looks_at_the_object():
    """Noise photos with one coloured square at a random place; the class is its colour. A
    small CNN that learned this must point into the square far more often than chance."""
    g = torch.Generator().manual_seed(0)
    colours = torch.tensor([[1.0, -1, -1], [-1, 1, -1], [-1, -1, 1]])

    def batch(n):
        x = torch.randn(n, 3, 32, 32, generator=g) * 0.5
        labels = torch.randint(0, 3, (n,), generator=g)
        corners = torch.randint(0, 24, (n, 2), generator=g)
        for i, (r, c) in enumerate(corners.tolist()):
            x[i, :, r:r + 8, c:c + 8] = colours[labels[i]][:, None, None]
        boxes = [[(c, r, c + 8, r + 8)] for r, c in corners.tolist()]
        return x, labels, boxes

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), nn.ReLU(),
                          nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
                          nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 3))
    optimizer = torch.optim.Adam(model.parameters(), 3e-3)
    for _ in range(150):
        x, labels, _ = batch(32)
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    x, labels, boxes = batch(64)
    assert (model(x).argmax(1) == labels).float().mean() > 0.9
    found_maps, _ = heatmaps.grad_cam(model, x, "2", labels)  # the last conv's ReLU
    hits, energy, area = maps.box_scores(found_maps, boxes, 32)
    chance = 64 / 32 ** 2
    assert area == pytest.approx([chance] * 64)
    assert sum(hits) / len(hits) > 3 * chance and sum(energy) / len(energy) > 2 * chance
    # task 3's CAM box: the largest region above half the maximum finds the square
    found = cam.map_boxes(found_maps, (0.5,), 32)
    ious = [boxes_io.iou(f[0.5], b[0]) for f, b in zip(found, boxes, strict=True)]
    assert sum(iou >= 0.5 for iou in ious) / len(ious) >= 0.8
    # without boxes: the true object's mask is a faithful map, a random one is not
    masks = torch.zeros(64, 32, 32)
    for i, ((x0, y0, x1, y1),) in enumerate(boxes):
        masks[i, y0:y1, x0:x1] = 1
    deletion, insertion = heatmaps.deletion_insertion(model, x, masks, labels, steps=16)
    noise = heatmaps.random_map(x, grid=32)
    deletion_random, insertion_random = heatmaps.deletion_insertion(model, x, noise, labels,
                                                                    steps=16)
    assert deletion.mean() < deletion_random.mean() - 0.1
    assert insertion.mean() >= insertion_random.mean()  # the canvas's tint gives the colour
    # each image's curves are its own: the same scores one image at a time
    alone = [heatmaps.deletion_insertion(model, x[i:i + 1], masks[i:i + 1], labels[i:i + 1],
                                         steps=16) for i in (0, 5)]
    torch.testing.assert_close(torch.cat([a[0] for a in alone]), deletion[[0, 5]])
    torch.testing.assert_close(torch.cat([a[1] for a in alone]), insertion[[0, 5]])


@pytest.mark.parametrize("name, layer", [
    ("resnet18", "layer4"), ("tf_efficientnet_lite0", "conv_head"),
    ("convnext_tiny", "features.7"),  # the last stage: the head's norm is not a stage's
    ("efficientnet_b0", "features.8"), ("mobilenet_v3_small", "features.12"),  # last convs
    ("vit_tiny", "encoder.layers.encoder_layer_1.ln_1"),  # the last of its 2 blocks
    ("timm/deit_tiny_distilled_patch16_224", "blocks.11.norm1"), ("swin_t", "permute"),
    ("timm/convnext_atto", "stages.3")])  # a timm CNN: its last feature stage
def test_the_default_cam_layer_is_each_architectures_last_stage(name, layer):
    model, spec = build_model(name, 5, "none", image_size=32 if name == "vit_tiny" else 64)
    assert cam.default_layer(spec, model) == layer


def test_the_default_cam_layer_reads_the_spec_and_refuses_what_it_cannot_pick():
    """A torchvision ViT of 3 blocks: the last block's norm (not the second); a CNN whose
    spec names two heads (the first's module is the head); a model that is neither a CNN
    nor a ViT: no default, the error says how to pick one."""
    from torchvision.models import VisionTransformer

    from shared.errors import UsageError
    from shared.models import ModelSpec

    vit = VisionTransformer(image_size=32, patch_size=8, num_layers=3, num_heads=2,
                            hidden_dim=16, mlp_dim=32)
    _, vit_spec = build_model("vit_tiny", 5, "none", image_size=32)
    assert cam.default_layer(vit_spec, vit) == "encoder.layers.encoder_layer_2.ln_1"
    net = nn.Sequential()
    net.add_module("stem", nn.Conv2d(3, 4, 3))
    net.add_module("body", nn.Conv2d(4, 4, 3))
    net.add_module("head", nn.Linear(4, 2))
    net.add_module("aux", nn.Linear(4, 2))
    two_heads = ModelSpec("two-heads", True, (0.5,) * 3, (0.5,) * 3, ("head", "aux"),
                          (("stem.",), ("body.",), ("head.", "aux.")))
    assert cam.default_layer(two_heads, net) == "body"
    other = ModelSpec("mlp-mixer", False, (0.5,) * 3, (0.5,) * 3, "head", (("stem.",),))
    with pytest.raises(UsageError, match="^mlp-mixer: no default layer for its maps; name one "
                                         "with --layer$"):
        cam.default_layer(other, net)


def test_a_layer_outside_the_graph_is_refused_by_name():
    """A branch the forward computes and the logits never read: no gradient reaches it, and
    the error names it (autograd's own error would not)."""
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.body, self.aux = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 4, 1)
            self.head = nn.Linear(4, 2)

        def forward(self, x):
            features = self.body(x)
            self.aux(features)  # computed, never read
            return self.head(features.mean((2, 3)))

    from shared.errors import UsageError

    with pytest.raises(UsageError, match="^no gradient reaches layer 'aux', so its map would "
                                         "be zero everywhere; pick a layer before the head "
                                         "reads the features$"):
        heatmaps.grad_cam(Branch(), torch.randn(2, 3, 8, 8), "aux")


def test_grad_cam_drops_every_prefix_token_of_a_distilled_vit():
    """DeiT-distilled has a class and a distillation token before its patches: both are
    dropped, leaving the 4 x 4 grid of a 64-px input in 16-px patches."""
    torch.manual_seed(0)
    model, spec = build_model("timm/deit_tiny_distilled_patch16_224", 5, "none", image_size=64)
    maps, _ = heatmaps.grad_cam(model, torch.randn(2, 3, 64, 64), cam.default_layer(spec, model))
    assert maps.shape == (2, 4, 4) and no_hooks(model)


def test_deletion_and_insertion_curves_worked_by_hand():
    """A 2 x 2 photo (0.9, 0.1, 0.5, 0.3; mean 0.45) and a map ranking its pixels 0, 2, 3, 1;
    the "model" scores w . x (w = 1, -1, 2, 0.5) against 0, so p = sigmoid(w . x). Step k of
    4 deletes (sets to the mean) or inserts (onto a canvas of the mean) the k most salient
    pixels; each AUC is the trapezoid over the 5 points, dx = 1/4."""
    class Linear(nn.Module):
        def forward(self, x):
            score = x.flatten(1) @ torch.tensor([1.0, -1.0, 2.0, 0.5])  # autocast would round it
            return torch.stack([score, torch.zeros_like(score)], 1)

    photo = torch.tensor([0.9, 0.1, 0.5, 0.3])
    order, mean = [0, 2, 3, 1], 0.45
    deletion, insertion = [], []
    for k in range(5):
        deleted, inserted = photo.clone(), torch.full((4,), mean)
        deleted[order[:k]], inserted[order[:k]] = mean, photo[order[:k]]
        for curve, image in ((deletion, deleted), (insertion, inserted)):
            score = (image * torch.tensor([1.0, -1.0, 2.0, 0.5])).sum()
            curve.append(torch.sigmoid(score).item())

    def trapezoid(curve):
        return 0.25 * (curve[0] / 2 + sum(curve[1:-1]) + curve[-1] / 2)

    found = heatmaps.deletion_insertion(Linear(), photo.view(1, 1, 2, 2),
                                        torch.tensor([[[4.0, 1.0], [3.0, 2.0]]]),
                                        torch.tensor([0]), steps=4)
    torch.testing.assert_close(found[0], torch.tensor([trapezoid(deletion)]))
    torch.testing.assert_close(found[1], torch.tensor([trapezoid(insertion)]))
    assert trapezoid(deletion) < trapezoid(insertion)  # the map found the pixels that matter


def test_deletion_ranks_by_the_map_upsampled_at_pixel_centres_ties_in_reading_order():
    """An 8 x 8 photo, one pixel a step (64 steps), a linear "model" with a different weight
    on every pixel, so the curve depends on the exact order. A flat map ties every pixel:
    they go in reading order (a stable sort; an unstable one reorders 64 ties). A 2 x 2 map
    with its peak top-left, upsampled at pixel centres: each axis weighs 1, 1, 0.875, 0.625,
    0.375, 0.125, 0, 0, a pixel its row's weight times its column's."""
    torch.manual_seed(0)
    photo, weights = torch.rand(64), torch.randn(64)

    class Linear(nn.Module):
        def forward(self, x):
            score = x.flatten(1) @ weights
            return torch.stack([score, torch.zeros_like(score)], 1)

    def by_hand(order):  # the AUCs of deleting / inserting pixels in this order
        mean, curves = photo.mean(), ([], [])
        for k in range(65):
            deleted, inserted = photo.clone(), torch.full((64,), mean.item())
            deleted[order[:k]], inserted[order[:k]] = mean, photo[order[:k]]
            for curve, image in zip(curves, (deleted, inserted), strict=True):
                curve.append(torch.sigmoid(image @ weights))
        return [torch.trapezoid(torch.stack(curve), dx=1 / 64) for curve in curves]

    axis = torch.tensor([1, 1, 0.875, 0.625, 0.375, 0.125, 0, 0])
    corner = (axis[:, None] * axis[None, :]).flatten()
    for heat, order in ((torch.ones(1, 2, 2), list(range(64))),
                        (torch.tensor([[[1.0, 0.0], [0.0, 0.0]]]),
                         corner.argsort(descending=True, stable=True).tolist())):
        found = heatmaps.deletion_insertion(Linear(), photo.view(1, 1, 8, 8), heat,
                                            torch.tensor([0]), steps=64)
        for ours, expected in zip(found, by_hand(order), strict=True):
            torch.testing.assert_close(ours, expected[None])


def test_deletion_and_insertion_default_to_21_points_under_the_given_autocast():
    """20 steps by default: 21 points a curve, each a pass for deletion and one for
    insertion; the model runs under the autocast dtype it is given (float16 here, not the
    CPU's default bfloat16) and under none without one."""
    seen = []

    class Recorder(nn.Module):
        def forward(self, x):
            seen.append(torch.get_autocast_dtype("cpu") if torch.is_autocast_enabled("cpu")
                        else None)
            return torch.zeros(len(x), 2)

    images, maps = torch.rand(1, 3, 4, 4), torch.rand(1, 2, 2)
    heatmaps.deletion_insertion(Recorder(), images, maps, torch.tensor([0]))
    assert seen == [None] * 42
    seen.clear()
    heatmaps.deletion_insertion(Recorder(), images, maps, torch.tensor([0]), steps=2,
                                amp_dtype=torch.float16)
    assert seen == [torch.float16] * 6


def test_token_grid_reads_tokens_row_by_row_past_the_prefix():
    """Tokens 1..6 after a class token, for a 16 x 24 input in 8-pixel patches: a 2 x 3
    grid, filled row by row; with 2 prefix tokens (class and distillation) both dropped."""
    tokens = torch.arange(7.0).view(1, 7, 1)
    torch.testing.assert_close(cam.token_grid(tokens, (16, 24), 8),
                               torch.tensor([[[[1.0, 2, 3], [4, 5, 6]]]]))
    two = torch.arange(8.0).view(1, 8, 1)
    torch.testing.assert_close(cam.token_grid(two, (16, 24), 8, prefix=2),
                               torch.tensor([[[[2.0, 3, 4], [5, 6, 7]]]]))
    with pytest.raises(ValueError, match="^8 tokens do not make a 2x3 grid plus 1 prefix"):
        cam.token_grid(two, (16, 24), 8)


def test_baseline_maps_and_feature_maps_by_hand():
    """The centre bump on a 3 x 3 grid: cell centres at -1/3, 0, 1/3 of the frame, sigma a
    quarter: exp(-r^2 / 0.125) is 1 in the middle, exp(-8/9) at an edge's middle, exp(-16/9)
    in a corner; the random map is 7 x 7 by default and the same for the same seed; feature
    maps are each named layer's output."""
    images = torch.zeros(2, 3, 8, 8)
    edge, corner = torch.exp(torch.tensor(-8 / 9)), torch.exp(torch.tensor(-16 / 9))
    expected = torch.tensor([[corner, edge, corner], [edge, 1.0, edge], [corner, edge, corner]])
    torch.testing.assert_close(heatmaps.centre_map(images, grid=3), expected.expand(2, 3, 3))
    default = heatmaps.centre_map(images)
    assert default.shape == (2, 15, 15) and default[:, 7, 7].tolist() == [1.0, 1.0]
    noise = heatmaps.random_map(images)
    assert noise.shape == (2, 7, 7) and torch.equal(noise, heatmaps.random_map(images, seed=0))
    assert not torch.equal(noise, heatmaps.random_map(images, seed=1))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 3))
    x = torch.randn(2, 3, 8, 8)
    found = heatmaps.feature_maps(model, x, ["0", "2"])
    with torch.no_grad():
        torch.testing.assert_close(found["0"], model[0](x))
        torch.testing.assert_close(found["2"], model(x))
    assert not found["2"].requires_grad and no_hooks(model)


def test_map_boxes_on_a_hand_worked_map():
    """Task 3's CAM box on an 8 x 8 map at its own size (the upsampling is the identity): a
    diagonal of four pixels at the peak, 2.0 (one region only under 8-connectivity), and a
    row of five at exactly half the peak; a map of zeros has no region: the whole frame."""
    heat = torch.zeros(2, 8, 8)
    for i in range(4):
        heat[0, i, i] = 2.0
    heat[0, 6, 2:7] = 1.0
    found = cam.map_boxes(heat, (0.5, 0.9), 8)
    assert found[0][0.5] == (2.0, 6.0, 7.0, 7.0)  # the row: 5 pixels "at least" half, > 4
    assert found[0][0.9] == (0.0, 0.0, 4.0, 4.0)  # the diagonal, one 8-connected region
    assert found[1] == {0.5: (0.0, 0.0, 8.0, 8.0), 0.9: (0.0, 0.0, 8.0, 8.0)}
    # (x0, y0, x1, y1) in the frame's pixels: a 4 x 4 square upsampled to a 16-pixel frame
    # (bilinear: 0.75 at frame column 7, 0.25 at 8)
    square = torch.zeros(1, 8, 8)
    square[0, :4, :4] = 1.0
    assert cam.map_boxes(square, (0.5,), 16)[0][0.5] == (0.0, 0.0, 8.0, 8.0)


def test_map_boxes_picks_the_largest_region_and_upsamples_by_pixel_centres():
    """Three regions numbered in reading order, the largest the middle one: its box. A 2 x 2
    map with its peak top-left, upsampled to 8 x 8 bilinearly at pixel centres (not corners):
    along each axis 1, 1, 0.875, 0.625, ... so at 0.8 of the peak the cells whose product
    reaches 0.8 are the 3 x 3 corner less its far cell: the box (0, 0, 3, 3) (corner-aligned
    sampling gives 1, 0.857, 0.714, ...: (0, 0, 2, 2))."""
    heat = torch.zeros(1, 8, 8)
    heat[0, 0, 0] = 1.0  # region 1: one pixel
    heat[0, 2, 0:4] = 1.0  # region 2: four
    heat[0, 5, 5:7] = 1.0  # region 3: two
    assert cam.map_boxes(heat, (0.5,), 8)[0][0.5] == (0.0, 2.0, 4.0, 3.0)
    corner = torch.tensor([[[1.0, 0.0], [0.0, 0.0]]])
    assert cam.map_boxes(corner, (0.8,), 8)[0][0.8] == (0.0, 0.0, 3.0, 3.0)


def test_maps_that_would_be_blank_or_ill_posed_are_refused():
    from shared.errors import UsageError

    vit, _ = build_model("vit_tiny", 3, "none", image_size=32)
    torch.nn.init.normal_(vit.heads.head.weight, std=0.01)
    images = torch.randn(2, 3, 32, 32)
    with pytest.raises(UsageError, match="no gradient reaches layer 'encoder.layers."
                                         "encoder_layer_1'"):
        heatmaps.grad_cam(vit, images, "encoder.layers.encoder_layer_1")  # past the last block
    with pytest.raises(UsageError, match="^Grad-CAM\\+\\+ is ill-posed on ViT tokens "
                                         "\\(encoder.layers.encoder_layer_1.ln_1\\): use "
                                         "gradcam or rollout$"):
        heatmaps.grad_cam(vit, images, "encoder.layers.encoder_layer_1.ln_1", plus=True)
    maps, _ = heatmaps.grad_cam(vit, images, "encoder.layers.encoder_layer_1.ln_1")
    assert maps.shape == (2, 4, 4) and maps.amax((1, 2)).gt(0).all()


def test_heatmaps_from_the_command_line(sample, tmp_path):
    root, _ = sample
    out = tmp_path / "results" / "task6_heatmap" / "bird" / "resnet18"
    result = run_cli("task6_heatmap/train.py", "--dataset", "bird", "--data-root", str(root),
                     "--model", "resnet18", "--weights", "none", "--image-size", "32",
                     "--epochs", "1", "--batch-size", "8", "--figure-images", "3",
                     "--layer", "layer3",  # 2 x 2 maps: rank correlations mean something
                     "--out", str(out))  # no checkpoint: trains one first
    assert result.returncode == 0, result.stderr[-3000:]
    assert (out / "classifier" / "best.pt").is_file() and (out / "figure.png").is_file()
    assert (out / "features" / "layer4.png").is_file()
    run_record = json.loads((out / "metrics.json").read_text())
    summary = run_record["metrics"]
    assert set(summary) == {"gradcam", "gradcam++", "random", "centre"}
    assert list((out / "tb").glob("events.out.tfevents.*"))
    for method in summary:
        record = json.loads((out / method / "metrics.json").read_text())
        assert record["task"] == "task6_heatmap"
        assert record["layer"] == ("layer3" if method.startswith("gradcam") else None)
        for key in ("pointing_game", "energy_in_box", "deletion_auc", "insertion_auc"):
            assert 0 <= record["metrics"][key] <= 1
        low, high = record["ci95"]["deletion_auc"]  # bootstrap over the images
        assert low <= record["metrics"]["deletion_auc"] <= high
        assert run_record["ci95"][f"{method}:deletion_auc"] == [low, high]  # each map's own
        per_image = np.load(out / method / record["per_image"]["deletion_auc"])
        assert len(set(per_image["index"])) == 20  # the scored photos, by key
        for key in ("deletion_auc", "insertion_auc"):  # the file backs each mean exactly
            assert float(np.mean(per_image[key])) == record["metrics"][key]
            assert list(stats.bootstrap_mean(per_image[key], seed=0)) == record["ci95"][key]
        corr = record["metrics"]["randomization_rank_corr"]
        assert (-1 <= corr <= 1) if method.startswith("gradcam") else corr is None
        if method == "gradcam":  # against the randomised copy: the model itself would read 1
            assert corr < 0.6  # (Grad-CAM++, nearer the activations, read 0.82 here)
        assert record["data"]["test_scored"] == record["data"]["test_with_boxes"] == 20
    table = write_tables(tmp_path / "results").read_text().split("## Table 5")[1]
    assert "| gradcam++ |" in table and "| centre |" in table and \
        "(task6_heatmap/bird/resnet18/figure.png)" in table
    # the same run as two seeds: a row over both, its interval drawn from the per-image
    # files, its figure the first seed's
    seeds = tmp_path / "seeds"
    for seed in ("seed0", "seed1"):
        shutil.copytree(tmp_path / "results", seeds / seed)
    table = write_tables(seeds).read_text().split("## Table 5")[1]
    row = next(line for line in table.splitlines() if "| gradcam++ |" in line)
    record = json.loads((out / "gradcam++" / "metrics.json").read_text())
    auc = record["metrics"]["deletion_auc"]
    assert f"| {auc:.3f} (" in row and f"; seeds {auc:.3f}, {auc:.3f}) |" in row
    assert "| 2 seeds |" in row
    assert "seed0: [figure.png](seed0/task6_heatmap/bird/resnet18/figure.png)" in row

    # photos without boxes: faithfulness still scored, box metrics left out, table built
    bare = tmp_path / "bare"
    shutil.copytree(root / "CUB_200_2011", bare / "CUB_200_2011")
    (bare / "CUB_200_2011" / "bounding_boxes.txt").unlink()
    unboxed = tmp_path / "results" / "task6_heatmap" / "bird" / "unboxed"
    result = run_cli("task6_heatmap/train.py", "--dataset", "bird", "--data-root", str(bare),
                     "--checkpoint", str(out / "classifier" / "best.pt"), "--images", "6",
                     "--batch-size", "4", "--figure-images", "2", "--out", str(unboxed))
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((unboxed / "gradcam" / "metrics.json").read_text())
    assert record["metrics"]["pointing_game"] is None and record["data"]["test_scored"] == 6
    assert 0 <= record["metrics"]["deletion_auc"] <= 1
    table = write_tables(tmp_path / "results").read_text().split("## Table 5")[1]
    assert "| 6 (0) |" in table


def test_the_randomisation_check_compares_with_a_randomised_copy():
    """A model against itself correlates 1 map by map; against `randomised_copy` (the same
    architecture, every weight drawn afresh) clearly less."""
    torch.manual_seed(0)
    model, spec = build_model("resnet18", 4, "none", 64)
    copy = maps.randomised_copy("resnet18", 4, spec, 64)
    trained, fresh = dict(model.named_parameters()), dict(copy.named_parameters())
    assert trained.keys() == fresh.keys()
    assert all(not torch.equal(trained[k], fresh[k]) for k in trained if trained[k].ndim > 1)
    x = torch.randn(8, 3, 64, 64)
    own, _ = heatmaps.grad_cam(model, x, "layer3")  # 4 x 4 maps
    other, _ = heatmaps.grad_cam(copy.eval(), x, "layer3")
    assert maps.rank_correlations(own, own) == pytest.approx([1.0] * 8)
    assert sum(maps.rank_correlations(own, other)) / 8 < 0.5
    constant = torch.ones(2, 4, 4)
    assert maps.rank_correlations(constant, own[:2]) == [0.0, 0.0]  # no rank order
