"""`mmcv._ext` on `torchvision.ops`, so MMDetection runs on `mmcv-lite` (no compiled ops).

mmcv's compiled ops do not install from the registry on current torch (mmcv 2.1.0 compiles
as C++17, which torch 2.14's headers refuse; mmdet 3.3.0 refuses mmcv 2.2.0). The two ops a
Faster R-CNN needs, NMS and RoIAlign (forward and backward), exist in torchvision for CPU and
CUDA; this module registers them under mmcv's names. Any other op raises NotImplementedError
naming it. Import this module before anything from mmcv.ops or mmdet:

    import mmcv_ext  # noqa: F401  (registers mmcv._ext)
"""

import importlib.machinery
import sys
import types

import torch
import torchvision  # noqa: F401  (registers torch.ops.torchvision)
from torch import Tensor


def nms(boxes: Tensor, scores: Tensor, iou_threshold: float, offset: int = 0) -> Tensor:
    """Indices kept, highest score first. mmcv's `offset=1` counts a box's width as
    x1 - x0 + 1 (legacy pixel boxes); shifting the far corner by one gives the same IoU."""
    if boxes.numel() == 0:
        return boxes.new_zeros(0, dtype=torch.long)
    if offset:
        boxes = torch.cat([boxes[:, :2], boxes[:, 2:4] + offset], dim=1)
    return torch.ops.torchvision.nms(boxes[:, :4], scores, float(iou_threshold))


def _check_avg(pool_mode: int) -> None:
    if pool_mode != 1:  # mmcv: 0 = max, 1 = avg
        raise NotImplementedError("mmcv._ext.roi_align with pool_mode='max': torchvision "
                                  "implements average RoIAlign only")


def roi_align_forward(input: Tensor, rois: Tensor, output: Tensor, argmax_y: Tensor,
                      argmax_x: Tensor, aligned_height: int, aligned_width: int,
                      spatial_scale: float, sampling_ratio: int, pool_mode: int,
                      aligned: bool) -> None:
    """Writes into `output` in place, as the compiled op does. `rois` rows are
    (batch index, x0, y0, x1, y1); sampling_ratio 0 samples adaptively in both."""
    _check_avg(pool_mode)
    if rois.numel():
        output.copy_(torch.ops.torchvision.roi_align(
            input, rois, float(spatial_scale), int(aligned_height), int(aligned_width),
            int(sampling_ratio), bool(aligned)))


def roi_align_backward(grad_output: Tensor, rois: Tensor, argmax_y: Tensor, argmax_x: Tensor,
                       grad_input: Tensor, aligned_height: int, aligned_width: int,
                       spatial_scale: float, sampling_ratio: int, pool_mode: int,
                       aligned: bool) -> None:
    """Writes the gradient for the feature map into `grad_input` in place."""
    _check_avg(pool_mode)
    if rois.numel():
        batch, channels, height, width = grad_input.shape
        grad_input.copy_(torch.ops.torchvision._roi_align_backward(
            grad_output, rois, float(spatial_scale), int(aligned_height), int(aligned_width),
            batch, channels, height, width, int(sampling_ratio), bool(aligned)))


class _Ext(types.ModuleType):
    """mmcv checks at import that every op of every `mmcv.ops` module exists; the ones we do
    not provide exist as functions that raise, naming the op, when a model calls them."""

    def __getattr__(self, name: str):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise NotImplementedError(
                f"mmcv op {name!r} is not available: this project runs MMDetection on "
                f"mmcv-lite, and {__name__} provides only nms, roi_align_forward and "
                "roi_align_backward (on torchvision.ops). Pick a detector config that needs "
                "no other compiled op, or install a full mmcv built for your torch.")
        missing.__name__ = name
        return missing


def install() -> None:
    """Registers the module as `mmcv._ext` (once; a real compiled mmcv wins if present)."""
    if "mmcv._ext" in sys.modules:
        return
    try:
        import mmcv._ext  # noqa: F401  (a full mmcv build has it)
        return
    except ImportError:
        pass
    ext = _Ext("mmcv._ext", __doc__)
    # No loader: mmengine's `mmcv_full_available()` stays False, which is true of mmcv-lite.
    ext.__spec__ = importlib.machinery.ModuleSpec("mmcv._ext", None)
    ext.nms = nms
    ext.roi_align_forward = roi_align_forward
    ext.roi_align_backward = roi_align_backward
    sys.modules["mmcv._ext"] = ext


install()
