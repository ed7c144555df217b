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
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # shared/ without PYTHONPATH
sys.path.insert(0, str(Path(__file__).resolve().parent))  # this folder's modules, any name

from shared import cli  # argparse only: torch loads in main, so --help answers at once

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
                       help="score a subset of this many test images, the same for every "
                            "--seed (None: all)")
    group.add_argument("--faithfulness-steps", type=cli.positive_int, default=20,
                       help="deletion and insertion: the map's pixels in this many shares")
    group.add_argument("--figure-photos", type=Path, nargs="+",
                       help="photos for the figure (None: the first test images)")
    group.add_argument("--figure-images", type=cli.positive_int, default=6,
                       help="how many test images the figure shows")
    args = cli.parse_with_recipes(parser, argv)
    args.out = args.out or Path("results", TASK, args.dataset, args.model)
    return args


def main(args: argparse.Namespace) -> None:
    import heatmaps  # torch loads here
    import numpy as np
    import torch
    from maps import (
        BASELINES,
        box_scores,
        method_maps,
        randomised_copy,
        rank_correlations,
        write_figures,
    )
    from torchvision.models.vision_transformer import VisionTransformer

    from shared import cam, checkpoint, data, engine, models, results, stats

    rt = engine.init_runtime(args.device, args.amp, args.seed)
    out = checkpoint.claim_run_folder(args.out, args.resume)
    index, train, val, test = data.prepare_splits(args.dataset, args.data_root,
                                                  args.val_fraction, args.seed, args.limit)
    if args.checkpoint is None:  # no classifier given: train one with the common flags
        flags = {**vars(args), "out": out / "classifier"}
        engine.train_classifier(TASK, "classifier", flags, engine.TrainConfig.from_flags(flags),
                                rt, index.classes, train, val, test)
        args.checkpoint = out / "classifier" / "best.pt"
    if not rt.main:  # under torchrun the heatmaps are the main process's alone: the others
        engine.shutdown(rt)  # would repeat its work and write the same files at once
        return
    model, spec, meta = models.load_classifier(args.checkpoint, index.classes)
    # channels_last and the evaluation batch, as the engine evaluates (docs/speed.md): the
    # deletion and insertion curves are 42 forward passes a photo and method
    channels_last = engine.use_channels_last(args.channels_last, spec, model, rt.device)
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    model.to(rt.device, memory_format=memory_format)
    batch = data.LoaderConfig.from_flags(vars(args)).eval_batch(rt.device.type == "cuda")
    size = meta["image_size"]
    random_model = randomised_copy(meta["model_name"], len(index.classes), spec, size)
    random_model.to(rt.device, memory_format=memory_format).eval()
    rollout = isinstance(model, VisionTransformer)  # written for torchvision's ViT
    methods = args.methods or (["gradcam", "gradcam++"] if spec.is_cnn
                               else ["rollout", "gradcam"] if rollout else ["gradcam"])
    layer = args.layer or cam.default_layer(spec, model)
    transform = data.build_transform(False, size, "letterbox",
                                     normalization=(meta["mean"], meta["std"]))
    scored = test if args.images is None else data.limit_per_split(test, args.images,
                                                                    data.TEST_SAMPLE_SEED)
    boxed = sum(bool(r.boxes) for r in scored)
    if not boxed:
        print(f"no true boxes in the test split of {args.dataset}: pointing game and energy "
              "in box are left out; deletion and insertion need none", flush=True)
    target = None if args.target is None else torch.tensor(args.target)
    numbers = {m: {"hits": [], "energy": [], "corr": [], "area": [], "deletion": [],
                   "insertion": []} for m in (*methods, *BASELINES)}
    for start in range(0, len(scored), batch):
        chunk = scored[start:start + batch]
        photos = [data.load_rgb(r.path) for r in chunk]  # read once: pixels and frame size
        images = torch.stack([transform(photo) for photo in photos]).to(
            rt.device, memory_format=memory_format)
        with torch.no_grad():  # not inference_mode: Grad-CAM indexes with its result
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
                n["corr"] += rank_correlations(maps, shuffled)

    figure_records = ([data.Record(p.name, p, -1) for p in args.figure_photos]
                      if args.figure_photos else test[:args.figure_images])
    write_figures(model, spec, figure_records, methods, layer, target, transform, meta, out, rt,
                  index.classes)
    summary, intervals = {}, {}

    def mean(values):
        return float(np.mean(values)) if values else None

    for method, n in numbers.items():
        record = results.task_record(
            TASK, method, vars(args), rt,
            {"pointing_game": mean(n["hits"]), "energy_in_box": mean(n["energy"]),
             "box_area_share": mean(n["area"]),
             "randomization_rank_corr": mean(n["corr"]),
             "deletion_auc": mean(n["deletion"]), "insertion_auc": mean(n["insertion"])},
            {"test_scored": len(scored), "test_with_boxes": boxed}, model=meta["model_name"],
            weights=args.checkpoint, layer=layer if method in ("gradcam", "gradcam++") else None,
            ci95={f"{curve}_auc": list(stats.bootstrap_mean(n[curve], seed=args.seed))
                  for curve in ("deletion", "insertion")},  # over images
            # each image's AUCs: a row over seeds draws its interval from them
            per_image={f"{curve}_auc": "per_image.npz" for curve in ("deletion", "insertion")},
            figure="../figure.png")  # from this file's folder
        (out / method).mkdir(parents=True, exist_ok=True)
        results.save_per_image(out / method / "per_image.npz", [r.key for r in scored],
                               {f"{curve}_auc": n[curve] for curve in ("deletion", "insertion")})
        results.write_json(record, out / method / "metrics.json")
        m = summary[method] = record["metrics"]
        intervals.update({f"{method}:{key}": ci for key, ci in record["ci95"].items()})
        print(f"{method}: deletion AUC {m['deletion_auc']:.3f}, insertion AUC "
              f"{m['insertion_auc']:.3f}" + (f", pointing game {m['pointing_game']:.3f}, "
                                              f"energy in box {m['energy_in_box']:.3f}"
                                              if boxed else ""), flush=True)
    # the run's own record, written last: run_all.sh takes it to mean "finished"
    del record["per_image"]  # each method's file is named in its own record
    results.write_json({**record, "variant": "summary", "metrics": summary,
                        "ci95": intervals}, out / "metrics.json")
    engine.shutdown(rt)


if __name__ == "__main__":
    cli.run(main, parse_args())
