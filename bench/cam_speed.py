"""Seconds a photo of task 3's CAM boxes, side by side in one run: Grad-CAM as
`shared.cam.grad_cam` computes it (the gradient of the layer's output alone) against the
same maps from a full backward pass (every parameter's gradient too: what it did before),
and the boxes of 19 thresholds (`shared.cam.map_boxes`).

    python bench/cam_speed.py                                  # lite0 at 224 px, batch 16
    python bench/cam_speed.py --model resnet18 --image-size 448

Random-init weights on random images; the maps of both ways are checked to be equal.
"""

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch

from shared import cam
from shared.models import build_model

THRESHOLDS = tuple(round(0.05 * i, 2) for i in range(1, 20))  # task 3's sweep


def full_backward_cam(model, images, layer):
    """Grad-CAM through `.backward()`: the parameters' gradients are computed as well."""
    with cam.Hooked(model, [layer], gradients=True) as hooked, torch.enable_grad():
        logits = model(images)
        logits.gather(1, logits.argmax(1)[:, None]).sum().backward()
    weights = hooked.gradient[layer].mean((2, 3))
    maps = torch.relu((weights[:, :, None, None] * hooked.activation[layer].detach()).sum(1))
    model.zero_grad(set_to_none=True)
    return cam.normalise(maps)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="tf_efficientnet_lite0")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    model, spec = build_model(args.model, 100, "none", args.image_size)
    model.eval()
    layer = cam.default_layer(spec, model)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size)
    ways = {"grad_cam (layer's gradient only)": lambda: cam.grad_cam(model, images, layer)[0],
            "full backward (before)": lambda: full_backward_cam(model, images, layer)}
    maps = {name: way() for name, way in ways.items()}  # warm-up, and the check
    torch.testing.assert_close(*maps.values())
    best = dict.fromkeys(ways, float("inf"))
    for _ in range(args.rounds):
        for name, way in ways.items():
            start = time.perf_counter()
            way()
            best[name] = min(best[name], (time.perf_counter() - start) / args.batch_size)
    start = time.perf_counter()
    cam.map_boxes(maps[next(iter(ways))], THRESHOLDS, args.image_size)
    boxes = (time.perf_counter() - start) / args.batch_size
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; {args.model}, "
          f"{args.image_size} px, batch {args.batch_size}, layer {layer}\n")
    print("| step | s a photo |\n|---|---|")
    for name, seconds in best.items():
        print(f"| {name} | {seconds:.4f} |")
    print(f"| boxes at {len(THRESHOLDS)} thresholds (map_boxes) | {boxes:.4f} |")


if __name__ == "__main__":
    main()
