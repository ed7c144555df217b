"""Task 6's scoring and figure: the map each method gives (and the baselines that ignore
the model), how a map is scored against the true boxes (pointing game, energy in box), and
the figure and overlays of a run."""

from __future__ import annotations

import warnings
from pathlib import Path

import heatmaps
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from shared import data, models


def box_scores(maps: torch.Tensor, boxes: list[list[tuple]], size: int
               ) -> tuple[list, list, list]:
    """Pointing game hits and energy-in-box shares of maps upsampled to the input frame, and
    the boxes' share of the frame (what a uniform or random map scores on both)."""
    full = F.interpolate(maps[:, None], size=(size, size), mode="bilinear",
                         align_corners=False)[:, 0]
    ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
    hits, energy, area = [], [], []
    for m, image_boxes in zip(full, boxes, strict=True):
        inside = torch.zeros(size, size, dtype=torch.bool)
        for x0, y0, x1, y1 in image_boxes:
            inside |= (xs >= x0) & (xs <= x1) & (ys >= y0) & (ys <= y1)
        hits.append(bool(inside.flatten()[m.argmax()]))
        energy.append(float(m[inside].sum() / m.sum().clamp_min(1e-12)))
        area.append(float(inside.float().mean()))
    return hits, energy, area


BASELINES = ("random", "centre")  # maps that ignore the model, scored the same way


def randomised_copy(model_name: str, classes: int, spec, image_size: int) -> torch.nn.Module:
    """The randomisation check's network (Adebayo et al. 2018): the trained model's
    architecture with fresh random weights (a zero-initialised head gets small random ones:
    torchvision's ViT head starts at zero, and every gradient, every map would be 0)."""
    random_model, _ = models.build_model(model_name, classes, "none", image_size)
    for name, param in random_model.named_parameters():
        if name.startswith(spec.head) and param.ndim > 1:
            torch.nn.init.normal_(param, std=0.01)
    return random_model


def rank_correlations(maps: torch.Tensor, other: torch.Tensor) -> list[float]:
    """Spearman's rank correlation of each map with the same method's map on another
    network: against the randomised copy, a method that reads the model scores low, one
    that ignores it about 1. A constant map has no rank order: 0."""
    import scipy.stats

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
        found = [scipy.stats.spearmanr(a.flatten(), b.flatten()).statistic
                 for a, b in zip(maps, other, strict=True)]
    return [0.0 if np.isnan(c) else float(c) for c in found]


def method_maps(method: str, model, images, layer, target, seed: int = 0):
    if method == "random":
        return heatmaps.random_map(images, seed=seed)
    if method == "centre":
        return heatmaps.centre_map(images)
    if method == "rollout":
        return heatmaps.attention_rollout(model, images)
    return heatmaps.grad_cam(model, images, layer, target, plus=method == "gradcam++")[0]


def colour(image: np.ndarray, heat: np.ndarray) -> Image.Image:
    """The map in matplotlib's perceptually uniform 'inferno' over the photo."""
    from matplotlib import colormaps

    overlay = colormaps["inferno"](heat)[..., :3] * 255
    return Image.fromarray((0.5 * image + 0.5 * overlay).astype(np.uint8))


def write_figures(model, spec, records, methods, layer, target, transform, meta, out, rt,
                  classes):
    """figure.png (a row per photo, labelled with its true and predicted class: the photo,
    then one titled overlay per method), the overlays, channel grids of every stage for the
    first photo, and the same in TensorBoard."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    from matplotlib import pyplot as plt
    from torch.utils.tensorboard import SummaryWriter
    from torchvision.utils import make_grid, save_image

    size = meta["image_size"]
    images = torch.stack([transform(data.load_rgb(r.path)) for r in records]).to(rt.device)
    mean = torch.tensor(meta["mean"])[:, None, None]
    std = torch.tensor(meta["std"])[:, None, None]
    photos = ((images.cpu() * std + mean).clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255)
    tiles = [torch.from_numpy(photos).permute(0, 3, 1, 2) / 255]
    (out / "overlays").mkdir(parents=True, exist_ok=True)
    batch_target = None if target is None else target.repeat(len(records))
    for method in methods:
        maps = method_maps(method, model, images, layer, batch_target).cpu()
        full = F.interpolate(maps[:, None], size=(size, size), mode="bilinear",
                             align_corners=False)[:, 0].numpy()
        overlays = [colour(p, m) for p, m in zip(photos, full, strict=True)]
        for r, overlay in zip(records, overlays, strict=True):
            overlay.save(out / "overlays" / f"{Path(r.key).stem}_{method}.png")
        tiles.append(torch.stack([torch.from_numpy(np.array(o)).permute(2, 0, 1) / 255
                                  for o in overlays]))
    grid = torch.stack(tiles, dim=1).flatten(0, 1)  # row per photo
    with torch.no_grad():
        predicted = model(images).argmax(1).tolist()
    titles = ["photo", *(f"{m} ({layer})" if m != "rollout" else m for m in methods)]
    figure, axes = plt.subplots(len(records), len(tiles), squeeze=False, dpi=80,
                                figsize=(2.2 * len(tiles), 2.4 * len(records)))
    for row, (record, guess) in enumerate(zip(records, predicted, strict=True)):
        truth = classes[record.label] if record.label >= 0 else "unknown"
        verdict = "" if record.label < 0 else (" (right)" if guess == record.label
                                               else " (wrong)")
        for column, tile in enumerate(tiles):
            cell = axes[row, column]
            cell.imshow(tile[row].permute(1, 2, 0).numpy())
            cell.set_xticks([])
            cell.set_yticks([])
            if row == 0:
                cell.set_title(titles[column], fontsize=8)
        axes[row, 0].set_ylabel(f"true {truth[:22]}\npredicted {classes[guess][:22]}{verdict}",
                                fontsize=7)
    figure.tight_layout()
    figure.savefig(out / "figure.png")
    plt.close(figure)
    writer = SummaryWriter(out / "tb")
    writer.add_image("heatmaps/figure", make_grid(grid, nrow=len(tiles)), 0)
    if spec.is_cnn:  # the seed's figure: every channel of every stage, min-max per channel
        stages = [s[0].rstrip(".") for s in spec.stages]
        (out / "features").mkdir(exist_ok=True)
        for name, fmap in heatmaps.feature_maps(model, images[:1], stages).items():
            channels = fmap[0, :64, None].cpu()
            low = channels.flatten(1).min(1).values[:, None, None, None]
            high = channels.flatten(1).max(1).values[:, None, None, None]
            channels = (channels - low) / (high - low).clamp_min(1e-12)
            save_image(channels, out / "features" / f"{name}.png", nrow=8)
            writer.add_image(f"features/{name}", make_grid(channels, nrow=8), 0)
    writer.close()
