"""Task 6: where the network looks (heatmaps), and numbers that say whether the maps are right.

    python task6_heatmap/train.py --dataset bird \
        --checkpoint results/task1_2_finetune/bird/pretrained/best.pt
    python task6_heatmap/train.py --dataset bird \
        --checkpoint results/task5_vit/bird/vit_b_16/best.pt
    python task6_heatmap/train.py --dataset dog           # no checkpoint: trains one first

Methods (heatmaps.py, all hook-based): Grad-CAM and Grad-CAM++ on any named layer of a CNN
(`--layer`, default its last stage), attention rollout and Grad-CAM on the token grid of a
ViT (default layer: the input norm of its last block), and the seed's per-channel
feature-map grids of every stage. The target class is the predicted one, or `--target K`
for all images. Images are letterboxed to the checkpoint's input size, as the seed
evaluated.

Writes to --out (default results/task6_heatmap/<dataset>/<model>): `<method>/metrics.json`
(and all methods in `metrics.json`) over the test split (`pointing_game`: the map's maximum
falls inside a true box; `energy_in_box`: the map's share inside the boxes;
`randomization_rank_corr`: Spearman correlation of the maps with those of the same network
with random weights, after Adebayo et al. 2018: a method that ignores the model scores ~1),
`figure.png` (photos x methods, a perceptual colormap over the photo), `overlays/`,
`features/<layer>.png` (channel grids of the first image) and TensorBoard images.
"""

import argparse
import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # `shared` without PYTHONPATH

from shared import cli  # noqa: E402  (argparse only)

TASK = "task6_heatmap"


def parse_args(argv=None) -> argparse.Namespace:
    parser = cli.task_parser(__doc__)
    group = parser.add_argument_group("heatmaps")
    group.add_argument("--checkpoint", type=Path,
                       help="a best.pt of task 1-2 or 5; without one, a classifier is trained "
                            "first with the common flags (into <out>/classifier)")
    group.add_argument("--methods", nargs="+",
                       choices=("gradcam", "gradcam++", "rollout"),
                       help="default: gradcam and gradcam++ for a CNN, rollout and gradcam "
                            "for a ViT")
    group.add_argument("--layer", help="the layer Grad-CAM reads (default: the last stage)")
    group.add_argument("--target", type=cli.nonnegative_int,
                       help="class index for every image (None: the predicted class)")
    group.add_argument("--images", type=cli.positive_int,
                       help="score a seeded subset of this many test images (None: all)")
    group.add_argument("--faithfulness-steps", type=cli.positive_int, default=20,
                       help="deletion and insertion: the map's pixels in this many shares")
    group.add_argument("--figure-photos", type=Path, nargs="+",
                       help="photos for the figure (None: the first test images)")
    group.add_argument("--figure-images", type=cli.positive_int, default=6,
                       help="how many test images the figure shows")
    args = cli.parse_with_recipes(parser, argv)
    args.out = args.out or Path("results", TASK, args.dataset, args.model)
    return args


if __name__ == "__main__":  # --help and bad flags answer before torch loads below
    ARGS = parse_args()

import numpy as np  # noqa: E402
import scipy.stats  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from PIL import Image  # noqa: E402
from torchvision.models.vision_transformer import VisionTransformer  # noqa: E402

from shared import cam, checkpoint, data, engine, models, results, stats  # noqa: E402
from task6_heatmap import heatmaps  # noqa: E402


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


def main(args: argparse.Namespace) -> None:
    rt = engine.init_runtime(args)
    out = checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args)
    if args.checkpoint is None:  # no classifier given: train one with the common flags
        args_classifier = argparse.Namespace(**{**vars(args), "out": out / "classifier"})
        engine.train_classifier(TASK, "classifier", args_classifier, rt, index.classes,
                                train, val, test)
        args.checkpoint = out / "classifier" / "best.pt"
    if not rt.main:  # under torchrun the heatmaps are the main process's alone: the others
        engine.shutdown(rt)  # would repeat its work and write the same files at once
        return
    model, spec, meta = models.load_classifier(args.checkpoint, index.classes)
    model.to(rt.device)
    size = meta["image_size"]
    random_model, _ = models.build_model(meta["model_name"], len(index.classes), "none", size)
    for name, param in random_model.named_parameters():
        if name.startswith(spec.head) and param.ndim > 1:  # torchvision's ViT head starts at
            torch.nn.init.normal_(param, std=0.01)  # zero: every gradient, every map would be 0
    random_model.to(rt.device).eval()
    rollout = isinstance(model, VisionTransformer)  # written for torchvision's ViT
    methods = args.methods or (["gradcam", "gradcam++"] if spec.is_cnn
                               else ["rollout", "gradcam"] if rollout else ["gradcam"])
    layer = args.layer or cam.default_layer(spec, model)
    transform = data.build_transform(False, size, "letterbox",
                                     normalization=(meta["mean"], meta["std"]))
    scored = test if args.images is None else data.limit_per_split(test, args.images,
                                                                    args.seed)
    boxed = sum(bool(r.boxes) for r in scored)
    if not boxed:
        print(f"no true boxes in the test split of {args.dataset}: pointing game and energy "
              "in box are left out; deletion and insertion need none", flush=True)
    target = None if args.target is None else torch.tensor(args.target)
    numbers = {m: {"hits": [], "energy": [], "corr": [], "area": [], "deletion": [],
                   "insertion": []} for m in (*methods, *BASELINES)}
    for start in range(0, len(scored), args.batch_size):
        chunk = scored[start:start + args.batch_size]
        photos = [data.load_rgb(r.path) for r in chunk]  # read once: pixels and frame size
        images = torch.stack([transform(photo) for photo in photos]).to(rt.device)
        with torch.no_grad():
            predicted = model(images).argmax(1)
        batch_target = predicted if target is None else target.repeat(len(chunk))
        with_boxes = [i for i, r in enumerate(chunk) if r.boxes]
        boxes = [[data.box_to_letterbox(box, *photos[i].size, size) for box in chunk[i].boxes]
                 for i in with_boxes]
        for method in numbers:
            maps = method_maps(method, model, images, layer, batch_target, args.seed + start)
            n = numbers[method]
            deletion, insertion = heatmaps.deletion_insertion(
                model, images, maps, batch_target, args.faithfulness_steps, rt.amp_dtype)
            n["deletion"] += deletion.tolist()
            n["insertion"] += insertion.tolist()
            maps = maps.cpu()
            if with_boxes:
                hits, energy, area = box_scores(maps[with_boxes], boxes, size)
                n["hits"] += hits
                n["energy"] += energy
                n["area"] += area
            if method not in BASELINES:  # the same method on a network with random weights
                shuffled = method_maps(method, random_model, images, layer, batch_target).cpu()
                with warnings.catch_warnings():  # a constant map has no rank order: 0 below
                    warnings.simplefilter("ignore", scipy.stats.ConstantInputWarning)
                    corr = [scipy.stats.spearmanr(a.flatten(), b.flatten()).statistic
                            for a, b in zip(maps, shuffled, strict=True)]
                n["corr"] += [0.0 if np.isnan(c) else float(c) for c in corr]

    figure_records = ([data.Record(p.name, p, -1) for p in args.figure_photos]
                      if args.figure_photos else test[:args.figure_images])
    write_figures(model, spec, figure_records, methods, layer, target, transform, meta, out, rt,
                  index.classes)
    summary, intervals = {}, {}

    def mean(values):
        return float(np.mean(values)) if values else None

    for method, n in numbers.items():
        record = results.task_record(
            TASK, method, args, rt,
            {"pointing_game": mean(n["hits"]), "energy_in_box": mean(n["energy"]),
             "box_area_share": mean(n["area"]),
             "randomization_rank_corr": mean(n["corr"]),
             "deletion_auc": mean(n["deletion"]), "insertion_auc": mean(n["insertion"])},
            {"test_scored": len(scored), "test_with_boxes": boxed}, model=meta["model_name"],
            weights=args.checkpoint, layer=layer if method in ("gradcam", "gradcam++") else None,
            ci95={f"{curve}_auc": list(stats.bootstrap_mean(n[curve], seed=args.seed))
                  for curve in ("deletion", "insertion")},  # over images
            figure="../figure.png")  # from this file's folder
        (out / method).mkdir(parents=True, exist_ok=True)
        results.write_json(record, out / method / "metrics.json")
        m = summary[method] = record["metrics"]
        intervals.update({f"{method}:{key}": ci for key, ci in record["ci95"].items()})
        print(f"{method}: deletion AUC {m['deletion_auc']:.3f}, insertion AUC "
              f"{m['insertion_auc']:.3f}" + (f", pointing game {m['pointing_game']:.3f}, "
                                              f"energy in box {m['energy_in_box']:.3f}"
                                              if boxed else ""), flush=True)
    # the run's own record, written last: run_all.sh takes it to mean "finished"
    results.write_json({**record, "variant": "summary", "metrics": summary,
                        "ci95": intervals}, out / "metrics.json")
    engine.shutdown(rt)


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


if __name__ == "__main__":
    cli.run(main, ARGS)
