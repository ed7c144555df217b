"""Table 1 (`python -m shared.results` reads this): training tricks and transfer learning.
Pretrained is compared with random initialisation, the strong recipe with the seed's."""

from shared.results import ACCURACY, DATASET, DEVICE, MODEL, Table, first, split_counts


def same_setting(r, o) -> bool:
    return r["dataset"] == o["dataset"] and r["model"] == o["model"]


def reference(r, rows):
    """pretrained against baseline, strong against the seed recipe's pretrained."""
    if r["variant"] == "baseline":
        return None
    if r["args"].get("recipe", "seed") == "seed":
        return first(rows, lambda o: same_setting(r, o) and o["variant"] == "baseline")
    return first(rows, lambda o: same_setting(r, o) and o["variant"] == "pretrained"
                 and o["args"].get("recipe", "seed") == "seed")


TABLES = [Table(
    "Table 1: training tricks and transfer learning (task 1-2)",
    rows=lambda r: r["task"] == "task1_2_finetune",
    order=lambda r: (r["dataset"], r["model"], r["variant"]),
    columns=[
        MODEL, DATASET,
        ("Variant", lambda r: r["variant"]),
        ("Recipe", lambda r: r["args"].get("recipe", "–")),
        ("Weights", lambda r: r["weights"]),
        *ACCURACY,
        ("Image size", lambda r: r["args"]["image_size"]),
        ("Train / val / test", split_counts),
        ("Train time (min)", lambda r: f"{r['timing']['train_seconds'] / 60:.1f}"),
        DEVICE,
    ],
    reference=reference, compared=[("top-1", "test_top1")], reference_name="its reference",
    confusions=True,
)]
