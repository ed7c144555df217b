"""What a fine-grained classifier confuses, from its test predictions: per-class accuracy
(`per_class.csv`), the confusion matrix (`confusion_matrix.png`, readable at 200 classes:
no text in the cells, counts on a log scale) and the most-confused class pairs with a test
photo of each (`confusions.png`)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

from shared.data import Record, load_rgb

FILES = {"per_class": "per_class.csv", "matrix": "confusion_matrix.png",
         "pairs": "confusions.png"}


def confusion_matrix(labels: np.ndarray, predicted: np.ndarray, classes: int) -> np.ndarray:
    """counts[true, predicted]."""
    counts = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(counts, (labels, predicted), 1)
    return counts


def confused_pairs(counts: np.ndarray, top: int = 10) -> list[tuple[int, int, int, int]]:
    """The `top` class pairs (a, b), a < b, with the most images of one called the other:
    (a, b, a called b, b called a), most confused first."""
    both = np.triu(counts + counts.T, k=1)
    order = np.argsort(-both, axis=None, kind="stable")[:top]
    pairs = [divmod(int(i), len(counts)) for i in order]
    return [(a, b, int(counts[a, b]), int(counts[b, a])) for a, b in pairs if both[a, b] > 0]


def write_confusions(out: Path, classes: list[str], records: list[Record], labels: np.ndarray,
                     logits: np.ndarray) -> dict[str, str]:
    """The three files in `out`; returns their names."""
    import matplotlib

    matplotlib.use("Agg")  # pragma: no mutate (files only, no display; any case)
    from matplotlib import pyplot as plt
    from matplotlib.colors import LogNorm

    predicted = np.asarray(logits, np.float32).argmax(axis=1)
    counts = confusion_matrix(labels, predicted, len(classes))
    with open(out / FILES["per_class"], "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["class", "test_images", "correct", "accuracy", "most_called",
                         "times"])
        for c, name in enumerate(classes):
            wrong = counts[c].copy()
            wrong[c] = 0
            other = int(wrong.argmax())
            total = int(counts[c].sum())
            writer.writerow([name, total, int(counts[c, c]),
                             f"{counts[c, c] / total:.4f}" if total else "",
                             classes[other] if wrong[other] else "", int(wrong[other])])

    figure, axes = plt.subplots(figsize=(7, 6), dpi=100)  # pragma: no mutate (appearance)
    shown = np.ma.masked_equal(counts, 0)  # empty cells stay white
    look = {"cmap": "viridis", "interpolation": "nearest"}  # pragma: no mutate (appearance)
    image = axes.imshow(shown, norm=LogNorm(vmin=1, vmax=max(2, counts.max())), **look)
    figure.colorbar(image, ax=axes, label="test images (log scale)")
    axes.set_xlabel("predicted class")
    axes.set_ylabel("true class")
    axes.set_title(f"Confusion matrix, {len(labels)} test images, {len(classes)} classes")
    figure.tight_layout()
    figure.savefig(out / FILES["matrix"])
    plt.close(figure)

    pairs = confused_pairs(counts)
    rows = max(1, len(pairs))
    size = {"figsize": (5, 2.4 * rows), "dpi": 72}  # pragma: no mutate (appearance)
    figure, grid = plt.subplots(rows, 2, squeeze=False, **size)
    for row, (a, b, a_as_b, b_as_a) in enumerate(pairs):
        for column, (c, d) in enumerate(((a, b), (b, a))):
            # a photo of c taken for d if there is one, else any photo of c
            chosen = np.flatnonzero((labels == c) & (predicted == d))
            chosen = chosen if len(chosen) else np.flatnonzero(labels == c)
            axes = grid[row, column]
            if len(chosen):
                record = records[int(chosen[0])]
                photo = load_rgb(record.path, record.crop)
                photo.thumbnail((160, 160))  # pragma: no mutate (appearance)
                axes.imshow(np.asarray(photo))
            count = a_as_b if column == 0 else b_as_a
            title = f"{classes[c][:28]}\ncalled {classes[d][:20]}: {count}"
            axes.set_title(title, fontsize=7)  # pragma: no mutate (appearance)
            axes.axis("off")
    if not pairs:
        grid[0, 0].set_title("no confusions", fontsize=8)  # pragma: no mutate (appearance)
        for axes in grid[0]:
            axes.axis("off")
    figure.tight_layout()
    figure.savefig(out / FILES["pairs"])
    plt.close(figure)
    return dict(FILES)


def forest_plot(panels: list[tuple[str, list]], path: Path) -> None:
    """`differences.png`: every paired comparison of the tables as a forest plot, a panel
    per table (`panels`: (table name, [(row, label, `paired_difference` result), ...])):
    each difference in points as a dot on its 95% interval, a line at zero; a row over
    several seeds says how many agree in sign."""
    import matplotlib

    matplotlib.use("Agg")  # pragma: no mutate (files only, no display; any case)
    from matplotlib import pyplot as plt

    heights = [max(1, len(rows)) for _, rows in panels] or [1]
    height = 0.8 + 0.32 * sum(heights) + 0.5 * len(heights)  # pragma: no mutate (appearance)
    size = {"figsize": (9, height), "dpi": 100}  # pragma: no mutate (appearance)
    figure, axes = plt.subplots(len(heights), 1, squeeze=False,
                                gridspec_kw={"height_ratios": heights}, **size)
    # how the marks look, once for every panel
    line, dot = {"color": "0.3", "linewidth": 1.5}, {"markersize": 5}  # pragma: no mutate
    zero, small = {"color": "0.6", "linewidth": 1}, {"fontsize": 7}  # pragma: no mutate
    if not panels:
        centred = {"x": 0.5, "y": 0.5, "ha": "center", "va": "center"}  # pragma: no mutate
        axes[0, 0].text(s="no comparisons yet", **centred)
        axes[0, 0].axis("off")
    for axis, (title, rows) in zip(axes[:, 0], panels, strict=False):  # none: one axis
        y = np.arange(len(rows))[::-1]
        for position, (_, _, found) in zip(y, rows, strict=True):
            low, high = found["ci95"]
            axis.plot([low, high], [position, position], **line)
            colour = "C0" if low > 0 else "C3" if high < 0 else "0.3"  # above, below, across 0
            axis.plot(found["difference"], position, "o", color=colour, **dot)
        axis.axvline(0, linestyle="--", **zero)
        agree = " ({seeds_agreeing}/{seeds} seeds agree)"  # on the difference's sign
        labels = [f"{row}: {label}" + (agree.format(**found) if found["seeds"] > 1 else "")
                  for row, label, found in rows]
        axis.set_yticks(y, labels, **small)
        axis.set_title(title, loc="left", fontsize=9)  # pragma: no mutate (appearance)
        axis.set_xlabel("difference from the reference row (points, 95% CI)", **small)
        axis.tick_params(axis="x", labelsize=7)  # pragma: no mutate (appearance)
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)
