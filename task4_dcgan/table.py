"""Table 3 (`python -m shared.results` reads this): DCGAN images added to the training set,
each row compared with task 1-2's pretrained run trained alike (real images only)."""

from shared.results import (
    ACCURACY,
    DATASET,
    DEVICE,
    MODEL,
    Table,
    first,
    trained_alike,
    with_spread,
)


def real_only(r) -> bool:
    """Task 1-2's pretrained runs (any recipe): Table 3's rows without DCGAN images."""
    return r["task"] == "task1_2_finetune" and r["variant"] == "pretrained"


def gan(r) -> bool:
    return r["task"] == "task4_dcgan"


def reference(r, rows):
    return None if real_only(r) else first(rows, lambda o: real_only(o) and trained_alike(r, o))


def kid_cell(r) -> str:
    """`12.3 ± 0.5`: KID with its sd over subsets; over seeds then the seeds' spread."""
    if "kid" not in r["metrics"]:
        return "–"
    mean, _, spread = with_spread("kid", 1000)(r).partition(" ")
    return f"{mean} ± {1000 * r['metrics']['kid_std']:.1f}" + (f" {spread}" if spread else "")


TABLES = [Table(
    "Table 3: DCGAN images added to the training set (task 4); task 1-2's pretrained runs "
    "are the rows without them, each row compared with the one trained alike",
    # a --gan-only run has no classifier: not a row
    rows=lambda r: real_only(r) or (gan(r) and r["variant"] == "dcgan"),
    order=lambda r: (r["dataset"], r["task"]),
    columns=[
        MODEL, DATASET,
        ("Training images", lambda r: f"{r['data']['real_train']} real + "
                                      f"{r['data']['synthetic']} DCGAN"
            if gan(r) else f"{r['data']['train']} real"),
        ("Recipe", lambda r: f"{r['args'].get('recipe', 'seed')}, {r['args']['image_size']} px"),
        *ACCURACY,
        ("GAN size", lambda r: r["args"].get("gan_size", "–")),
        ("DiffAugment", lambda r: r["args"].get("diffaugment", "none") if gan(r) else "–"),
        # over seeds: means, each with its spread (no per-image values behind them)
        ("FID (lite0)", with_spread("fid")),
        ("KID x 1000 (± sd over subsets)", kid_cell),
        ("Generated class acc. (%)", with_spread("gen_class_acc", 100, 2)),
        ("GAN-test: generated / real val at GAN size (%)", lambda r: (
            f"{with_spread('gan_test_top1', 100, 2)(r)} / "
            f"{with_spread('gan_test_real_val_top1', 100, 2)(r)}")
            if "gan_test_top1" in r["metrics"] else "–"),
        ("GAN-train (%)", with_spread("gan_train_top1", 100, 2)),
        ("Val FID", with_spread("val_fid")),
        DEVICE,
    ],
    reference=reference, compared=[("top-1", "test_top1")],
    reference_name="no DCGAN images", confusions=True,
)]
