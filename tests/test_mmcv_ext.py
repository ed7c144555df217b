"""mmcv's NMS and RoIAlign, served by task3_crop/mmcv_ext on torchvision.ops, give torchvision's
results through mmcv's own Python wrappers (the code path mmdet calls)."""

import mmcv_ext  # noqa: F401  (registers mmcv._ext, which mmcv.ops needs at import)

# isort: split
import mmcv.ops as mmcv_ops
import pytest
import torch
import torchvision

# CUDA runs where there is a GPU (the shim serves torchvision's CUDA kernels there too).
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def random_boxes(n: int, generator: torch.Generator) -> torch.Tensor:
    xy = torch.rand(n, 2, generator=generator) * 50
    wh = torch.rand(n, 2, generator=generator) * 30 + 1
    return torch.cat([xy, xy + wh], dim=1)


@pytest.mark.parametrize("device", DEVICES)
def test_nms_matches_torchvision_with_ties(device):
    g = torch.Generator().manual_seed(0)
    boxes = random_boxes(200, g)
    boxes[100:] = boxes[:100]  # exact duplicate boxes ...
    scores = torch.rand(200, generator=g).round(decimals=1)  # ... and many tied scores
    boxes, scores = boxes.to(device), scores.to(device)
    dets, keep = mmcv_ops.nms(boxes, scores, iou_threshold=0.5)
    expected = torchvision.ops.nms(boxes, scores, 0.5)
    assert torch.equal(keep, expected)
    assert torch.equal(dets[:, :4], boxes[expected])
    assert torch.equal(dets[:, 4], scores[expected])
    assert len(set(keep.tolist())) == len(keep) < 200  # duplicates were suppressed


def test_nms_offset_counts_the_last_pixel():
    # Widths 10 and 10 overlapping by 5: IoU 5/15 without offset, 6/16 (as 11-wide) with one.
    boxes = torch.tensor([[0.0, 0, 10, 10], [5, 0, 15, 10]])
    scores = torch.tensor([0.9, 0.8])
    assert mmcv_ops.nms(boxes, scores, iou_threshold=0.35)[1].tolist() == [0, 1]
    assert mmcv_ops.nms(boxes, scores, iou_threshold=0.35, offset=1)[1].tolist() == [0]


def test_nms_on_empty_input():
    dets, keep = mmcv_ops.nms(torch.zeros(0, 4), torch.zeros(0), iou_threshold=0.5)
    assert keep.shape == (0,) and dets.shape == (0, 5)


def test_batched_nms_score_threshold_and_max_num():
    # mmdet's path: class-aware NMS with a score threshold and a cap, as in its test_cfg
    g = torch.Generator().manual_seed(1)
    boxes, scores = random_boxes(300, g), torch.rand(300, generator=g)
    labels = torch.randint(0, 3, (300,), generator=g)
    dets, keep = mmcv_ops.batched_nms(boxes, scores, labels,
                                      dict(type="nms", iou_threshold=0.6))
    expected = torchvision.ops.batched_nms(boxes, scores, labels, 0.6)
    assert torch.equal(keep, expected)
    _, keep = mmcv_ops.nms(boxes, scores, 0.6, score_threshold=0.5, max_num=10)
    assert len(keep) <= 10 and bool((scores[keep] > 0.5).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("aligned", [True, False])
@pytest.mark.parametrize("sampling_ratio", [0, 2])
def test_roi_align_forward_and_backward_match_torchvision(aligned, sampling_ratio, device):
    g = torch.Generator().manual_seed(2)
    features = torch.randn(2, 8, 24, 20, generator=g, dtype=torch.float64).to(device)
    boxes = random_boxes(12, g).double() / 2
    rois = torch.cat([torch.randint(0, 2, (12, 1), generator=g).double(), boxes],
                     dim=1).to(device)
    ours_in = features.clone().requires_grad_()
    theirs_in = features.clone().requires_grad_()
    ours = mmcv_ops.roi_align(ours_in, rois, (5, 4), 0.5, sampling_ratio, "avg", aligned)
    theirs = torchvision.ops.roi_align(theirs_in, rois, (5, 4), 0.5, sampling_ratio, aligned)
    torch.testing.assert_close(ours, theirs)
    weights = torch.randn(ours.shape, generator=g, dtype=torch.float64).to(device)
    (ours * weights).sum().backward()
    (theirs * weights).sum().backward()
    torch.testing.assert_close(ours_in.grad, theirs_in.grad)
    assert ours_in.grad.abs().sum() > 0


def test_roi_align_gradient_is_the_true_gradient():
    # The backward is checked against finite differences, not only against torchvision.
    g = torch.Generator().manual_seed(3)
    features = torch.randn(1, 2, 8, 8, generator=g, dtype=torch.float64, requires_grad=True)
    rois = torch.tensor([[0, 1.3, 0.7, 6.2, 5.9], [0, 0.0, 2.5, 3.1, 7.4]], dtype=torch.float64)
    assert torch.autograd.gradcheck(
        lambda x: mmcv_ops.roi_align(x, rois, (3, 3), 1.0, 2, "avg", True), (features,))


def test_roi_align_with_no_rois():
    out = mmcv_ops.roi_align(torch.randn(1, 4, 8, 8), torch.zeros(0, 5), (7, 7), 1.0, 0)
    assert out.shape == (0, 4, 7, 7)


def test_ops_we_do_not_provide_name_themselves():
    with pytest.raises(NotImplementedError, match="'deform_conv_forward'"):
        mmcv_ops.deform_conv2d(torch.zeros(1, 1, 3, 3), torch.zeros(1, 18, 1, 1),
                               torch.zeros(1, 1, 3, 3))
    with pytest.raises(NotImplementedError, match="pool_mode='max'"):
        mmcv_ops.roi_align(torch.randn(1, 1, 4, 4), torch.tensor([[0.0, 0, 0, 2, 2]]), (2, 2),
                           1.0, 0, "max")
