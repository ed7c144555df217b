"""Table 6 (`python -m shared.results` reads this): adversarial robustness, every row
compared with the standard (task 1-2) model on clean and worst-case accuracy."""

from shared.results import DATASET, DEVICE, MODEL, Table, first, with_interval


def training_cell(r) -> str:
    """The attack, its budget and share, how the epoch was chosen and where the
    catastrophic-overfitting guard stopped the run."""
    if r["variant"] == "standard":
        return "standard"
    a = r["args"]
    guard = r["metrics"].get("overfit_guard") or {}
    stopped = (f"; guard stopped it at epoch {guard['stopped_at_epoch']}"
               if guard.get("stopped_at_epoch") else "")
    return (f"{r['variant']} eps {a['adv_eps']:g}/255, p {a['adv_prob']:g} per "
            f"{a['adv_mode']}; best epoch by {a.get('select', 'clean')} val{stopped}")


def masking_cell(r) -> str:
    checks = r["metrics"].get("gradient_masking")
    if checks is None:
        return "–"
    return "pass" if checks["passed"] else "FAIL: " + "; ".join(checks["failed"])


def reference(r, rows):
    return None if r["variant"] == "standard" else first(
        rows, lambda o: o["variant"] == "standard" and o["dataset"] == r["dataset"])


def compared(rows) -> list[tuple[str, str]]:
    """Clean and every worst-case budget that a row has predictions for, smallest first."""
    worst = {name for r in rows for name in r.get("predictions", {})
             if name.startswith("robust_top1:worst@")}
    by_budget = sorted(worst, key=lambda name: float(name.split("@")[1].removesuffix("/255")))
    return [("clean", "clean_top1"),
            *((name.removeprefix("robust_top1:").upper(), name) for name in by_budget)]


TABLES = [Table(
    "Table 6: adversarial robustness (task 7): clean and worst-case robust test top-1 (%) "
    "at eps/255 on [0, 1] pixels, an image robust only if it survives FGSM and every PGD "
    "restart; masking: Carlini et al. 2019's checks (a failed one means the robust figures "
    "are not to be trusted); standard = task 1-2's model",
    rows=lambda r: r["task"] == "task7_fgsm",
    order=lambda r: (r["dataset"], r["variant"] != "standard", r["variant"]),
    columns=[
        MODEL, DATASET,
        ("Training", training_cell),
        ("Clean", with_interval("clean_top1")),
        *((f"Worst {eps}", with_interval(f"robust_top1:worst@{eps}/255"))
          for eps in (1, 2, 4, 8)),
        ("Attacks (test images)", lambda r: f"FGSM + PGD-{r['args']['pgd_steps']} x "
            f"{r['args'].get('restarts', 1)} "
            f"({r['data'].get('test_attacked', r['data']['test'])})"),
        ("Masking checks", masking_cell),
        DEVICE,
    ],
    reference=reference, compared=compared, reference_name="standard",
)]
