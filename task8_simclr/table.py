"""Table 7 (`python -m shared.results` reads this): SimCLR against random and ImageNet
initialisation, each row compared with ImageNet's at the same label budget."""

from shared.results import (
    DATASET,
    DEVICE,
    MODEL,
    Table,
    first,
    mean_and_spread,
    with_interval,
)

BACKBONES = {"random": "random", "simclr": "SimCLR (from random)",
             "imagenet": "ImageNet", "imagenet-simclr": "ImageNet → SimCLR"}


def reference(r, rows):
    return None if r["variant"] == "imagenet" else first(
        rows, lambda o: o["variant"] == "imagenet" and o["dataset"] == r["dataset"]
        and o["metrics"]["label_fraction"] == r["metrics"]["label_fraction"])


TABLES = [Table(
    "Table 7: self-supervised SimCLR against random and ImageNet initialisation (task 8): "
    "test top-1 (%) with a share of the training labels (or N photos a class)",
    rows=lambda r: r["task"] == "task8_simclr" and r["variant"] in BACKBONES,
    order=lambda r: (r["dataset"], r["metrics"]["label_fraction"],
                     list(BACKBONES).index(r["variant"])),
    columns=[
        MODEL, DATASET,
        ("Labels", lambda r: (r["metrics"].get("label_budget")  # older runs: the share
                              or f"{100 * r['metrics']['label_fraction']:g}%")
                             + f" ({r['data']['train_labelled']} images)"),
        ("Backbone", lambda r: BACKBONES[r["variant"]]),
        ("Start weights", lambda r: r["weights"]),
        ("Linear probe", with_interval("linear_top1")),
        ("kNN", with_interval("knn_top1")),
        ("Fine-tune", with_interval("finetune_top1")),
        ("SimCLR epochs / batch / optimiser", lambda r: f"{r['args']['simclr_epochs']} / "
            f"{r['args']['simclr_batch_size']} / {r['args']['simclr_optimizer']}"
            if "simclr" in r["variant"] else "–"),
        ("Final val kNN (monitor)", lambda r: mean_and_spread(
            [(m.get("pretrain_history") or [{}])[-1].get("val_knn_top1")
             for m in r.get("_seeds", [r])], 100, 2)),
        DEVICE,
    ],
    reference=reference,
    compared=[("linear", "linear_top1"), ("kNN", "knn_top1"), ("fine-tune", "finetune_top1")],
    reference_name="ImageNet",
)]
