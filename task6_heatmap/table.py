"""Table 5 (`python -m shared.results` reads this): are the heatmaps right?"""

import posixpath

from shared.results import DATASET, MODEL, Table, fixed, pct, seed_of, with_interval

BASELINES = ("random", "centre")  # maps that ignore the model


def figure_cell(r: dict) -> str:
    """The run's figure; a row over seeds links its first seed's, named."""
    run = r.get("_seeds", [r])[0]
    link = "[figure.png]({})".format(posixpath.normpath(posixpath.join(run["_dir"],
                                                                         run["figure"])))
    return link if len(r.get("_seeds", [r])) == 1 else f"{seed_of(run)}: {link}"


TABLES = [Table(
    "Table 5: are the heatmaps right? (task 6) Deletion AUC (lower is better) and insertion "
    "AUC (higher is better) of the target class's probability as the map's pixels, most "
    "salient first, are set to the photo's mean colour or put back onto it; pointing game "
    "and energy in the true boxes where boxes exist (higher is better); rank correlation "
    "with a randomly initialised network's maps (near 1: the method ignores the model). The "
    "random and centre maps are baselines",
    rows=lambda r: r["task"] == "task6_heatmap" and r["variant"] not in ("classifier",
                                                                         "summary"),
    order=lambda r: (r["dataset"], r["model"], r["variant"] in BASELINES, r["variant"]),
    columns=[
        MODEL, DATASET,
        ("Method", lambda r: r["variant"]),
        ("Layer", lambda r: r["layer"] or ("all blocks" if r["variant"] == "rollout" else "–")),
        ("Deletion AUC (95% CI)", with_interval("deletion_auc", 1, 3, fixed)),
        ("Insertion AUC (95% CI)", with_interval("insertion_auc", 1, 3, fixed)),
        ("Pointing game (%)", lambda r: pct(r["metrics"]["pointing_game"])),
        ("Energy in box (%)", lambda r: pct(r["metrics"]["energy_in_box"])),
        ("Randomisation rank corr.", lambda r: fixed(r["metrics"]["randomization_rank_corr"])),
        ("Boxes' share of the frame (chance, %)", lambda r: pct(r["metrics"]["box_area_share"])),
        ("Test images (with boxes)", lambda r: f"{r['data']['test_scored']} "
                                              f"({r['data'].get('test_with_boxes', '–')})"),
        ("Figure", figure_cell),
    ],
)]
