"""Table 4 (`python -m shared.results` reads this): ViT against CNN, accuracy and cost;
each row compared with the first of its dataset (the costliest model)."""

from shared.results import ACCURACY, DATASET, DEVICE, MODEL, Table, first


def first_of_dataset(r, rows):
    found = first(rows, lambda o: o["dataset"] == r["dataset"])
    return None if found is r else found


TABLES = [Table(
    "Table 4: ViT against CNN, accuracy and cost (task 5; a task 1-2 run that measured its "
    "cost is a row too)",
    # task 1-2's runs with --measure-cost: run_all.sh's strong run, so that Table 4 does
    # not train the same CNN again
    rows=lambda r: r["task"] == "task5_vit" or (r["task"] == "task1_2_finetune"
                                                and "gflops" in r["metrics"]),
    order=lambda r: (r["dataset"], -r["metrics"]["gflops"]),
    columns=[
        MODEL, DATASET,
        ("Weights", lambda r: r["weights"]),
        ("Recipe", lambda r: r["args"]["recipe"]),
        ("Image size", lambda r: r["args"]["image_size"]),
        *ACCURACY,
        ("Params (M)", lambda r: f"{r['metrics']['params_m']:.2f}"),
        ("GFLOPs (multiply-adds)", lambda r: f"{r['metrics']['gflops']:.2f}"),
        ("Train img/s", lambda r: f"{r['metrics']['train_images_per_s']:.1f}"),
        ("Inference img/s", lambda r: f"{r['metrics']['infer_images_per_s']:.1f}"),
        ("Peak memory (MB)", lambda r: f"{r['metrics']['peak_mem_mb']:.0f}"),
        ("Train time (min)", lambda r: f"{r['metrics']['train_seconds'] / 60:.1f}"),
        DEVICE,
    ],
    reference=first_of_dataset, compared=[("top-1", "test_top1")],
    reference_name="the first model", confusions=True,
)]
