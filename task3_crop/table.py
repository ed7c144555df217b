"""Tables 2 and 2b (`python -m shared.results` reads this): the crop classifiers, each
compared with task 1-2's pretrained run trained alike (the whole photo), and the
localisers that gave their boxes."""

from shared.results import (
    ACCURACY,
    DATASET,
    DATASET_NAMES,
    DEVICE,
    MODEL,
    Table,
    first,
    pct,
    split_counts,
    trained_alike,
)

LOCALISERS = ("detector", "cam", "centre")  # detect.py's variants (Table 2b)
CROPS = {"none": 0, "box": 1, "square": 2}
SOURCES = ("centre", "CAM", "detector", "true boxes")  # Table 2's order: the whole photo first


def whole_photo(r) -> bool:
    """Task 1-2's pretrained runs (any recipe): Table 2's rows without a crop."""
    return r["task"] == "task1_2_finetune" and r["variant"] == "pretrained"


def order(r):
    localiser = r["metrics"].get("localiser", "")
    source = next((i for i, name in enumerate(SOURCES) if localiser.startswith(name)), -1)
    return (r["dataset"], r["task"] == "task3_crop", source,
            CROPS[r["args"].get("crop", "none")], r["args"].get("tta", "none") != "none",
            r["variant"])


def crop_cell(r) -> str:
    crop = r["args"].get("crop", "none (task 1-2)")
    return crop + " + whole photo (TTA)" if r["args"].get("tta", "none") != "none" else crop


def cropped(r) -> bool:
    return r["args"].get("crop", "none") != "none"


def corloc_cell(r) -> str:
    return (pct(r["metrics"].get("detector_corloc"))
            if r["args"].get("test_boxes") == "pred" and cropped(r) else "–")


def reference(r, rows):
    """The whole photo trained alike (a strong recipe's crop row against the strong
    recipe's whole photos); none if there is none."""
    return None if whole_photo(r) else first(rows, lambda o: whole_photo(o)
                                             and trained_alike(r, o))


def trained(r) -> bool:  # the centre and CAM boxes train nothing
    return r["variant"] == "detector"


TABLES = [
    Table(
        "Table 2: classify the animal's crop (task 3); task 1-2's pretrained runs are the "
        "no-crop rows, each row compared with the one trained alike",
        rows=lambda r: whole_photo(r) or (r["task"] == "task3_crop"
                                          and r["variant"] not in LOCALISERS),
        order=order,
        columns=[
            MODEL, DATASET,
            ("Recipe", lambda r: f"{r['args'].get('recipe', 'seed')}, "
                                 f"{r['args']['image_size']} px"),
            ("Crop", crop_cell),
            ("Localiser", lambda r: r["metrics"].get("localiser", "–")),
            ("Train boxes", lambda r: r["args"].get("train_boxes", "–") if cropped(r) else "–"),
            ("Test boxes", lambda r: {"gt": "gt (oracle)", "pred": "predicted"}.get(
                r["args"].get("test_boxes")) if cropped(r) else "–"),
            *ACCURACY,
            ("Localiser CorLoc (%)", corloc_cell),
            ("Whole-image test images", lambda r: r["data"]["whole_image_fallback"]["test"]
                if cropped(r) else "–"),
            ("Train / val / test", split_counts),
            DEVICE,
        ],
        reference=reference, compared=[("top-1", "test_top1")],
        reference_name="the whole photo", confusions=True,
    ),
    Table(
        "Table 2b: the localisers (task 3): top box against the true boxes of the test split; "
        "the centre box is the baseline",
        rows=lambda r: r["task"] == "task3_crop" and r["variant"] in LOCALISERS,
        order=lambda r: (r["dataset"], r["variant"]),
        columns=[
            ("Localiser", lambda r: r["model"]),
            ("Dataset", lambda r: DATASET_NAMES[r["dataset"]]),
            ("Weights", lambda r: r["weights"]),
            ("CorLoc (IoU >= 0.5, %)", lambda r: pct(r["metrics"]["detector_corloc"])),
            ("MaxBoxAcc (%)", lambda r: pct(r["metrics"].get("max_box_acc"))),
            ("Mean IoU", lambda r: f"{r['metrics']['detector_miou']:.3f}"
                if r["metrics"]["detector_miou"] is not None else "–"),
            ("No detection", lambda r: "–" if r["metrics"]["no_detection"] is None
                else r["metrics"]["no_detection"]),
            ("Epochs", lambda r: r["args"]["epochs"] if trained(r) else "–"),
            ("Input", lambda r: "x".join(map(str, r["args"]["image_scale"]))
                if trained(r) else "–"),
            ("Train images", lambda r: r["data"]["train"]),
            ("Train time (min)", lambda r: f"{r['timing']['train_seconds'] / 60:.1f}"
                if trained(r) else "–"),
            ("Predict (ms/image)",
             lambda r: f"{1000 * r['timing']['predict_seconds_per_image']:.0f}"),
            DEVICE,
        ],
    ),
]
