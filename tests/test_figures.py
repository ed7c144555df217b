"""What the figures show: the forest plot's dots, intervals and labels, the confusion matrix's
orientation and scale, and which photo stands for each confused pair. The figures are
caught before they are closed (`kept_figures`) and read through matplotlib's own objects;
sizes, colours of lines and fonts are appearance and not asserted."""

import dataclasses

import matplotlib
import numpy as np
import pytest
from PIL import Image

from shared import figures
from shared.data import Record

matplotlib.use("Agg")
from matplotlib import pyplot as plt  # noqa: E402  (after the backend)


@pytest.fixture
def kept_figures(monkeypatch):
    """Every figure the code closes, kept open and listed in order."""
    kept, close = [], plt.close
    monkeypatch.setattr(plt, "close", kept.append)
    yield kept
    for figure in kept:
        close(figure)


def _difference(value, low, high, seeds=1, agreeing=1):
    return {"difference": value, "ci95": [low, high], "seeds": seeds,
            "seeds_agreeing": agreeing}


def _dots(axis):
    """(x, y, colour) of each marker line: the differences."""
    return [(line.get_xdata()[0], line.get_ydata()[0], line.get_color())
            for line in axis.lines if line.get_marker() == "o"]


def _intervals(axis):
    """(low, high, y) of each two-point horizontal segment: the intervals."""
    return [(*line.get_xdata(), line.get_ydata()[0]) for line in axis.lines
            if line.get_marker() in ("None", "", None) and len(line.get_xdata()) == 2
            and line.get_ydata()[0] == line.get_ydata()[1]]


def test_forest_plot_puts_each_difference_on_its_interval_in_row_order(tmp_path, kept_figures):
    """Table 1's first row on top; a dot blue when its interval lies above zero, red below,
    grey across it or touching it; a line at zero; a row over seeds names how many agree;
    panel heights follow the rows (two rows against one, three)."""
    panels = [("Table 1", [("pretrained", "top-1", _difference(5.0, 2.0, 8.0)),
                           ("strong", "top-1", _difference(-1.0, -3.0, 1.0, 3, 2))]),
              ("Table 6", [("pgd2", "PGD", _difference(-4.0, -6.0, -2.0))]),
              ("Table 7", [("touches zero", "above", _difference(1.0, 0.0, 2.0)),
                           ("touches zero", "below", _difference(-1.0, -2.0, 0.0)),
                           ("just above", "x", _difference(0.7, 0.5, 0.9, 2, 2))])]
    path = tmp_path / "differences.png"
    figures.forest_plot(panels, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    (figure,) = kept_figures
    top, bottom, touching = figure.axes
    assert [axis.get_title(loc="left") for axis in figure.axes] == ["Table 1", "Table 6",
                                                                    "Table 7"]
    assert _dots(top) == [(5.0, 1, "C0"), (-1.0, 0, "0.3")]
    assert _intervals(top) == [(2.0, 8.0, 1), (-3.0, 1.0, 0)]
    assert _dots(bottom) == [(-4.0, 0, "C3")] and _intervals(bottom) == [(-6.0, -2.0, 0)]
    assert [colour for *_, colour in _dots(touching)] == ["0.3", "0.3", "C0"]
    assert touching.get_yticklabels()[-1].get_text() == "just above: x (2/2 seeds agree)"
    for axis in figure.axes:
        zero = [line for line in axis.lines if list(line.get_xdata()) == [0, 0]]
        assert len(zero) == 1 and zero[0].get_linestyle() == "--"
        assert axis.get_xlabel() == "difference from the reference row (points, 95% CI)"
    assert list(top.get_yticks()) == [1, 0]
    assert [t.get_text() for t in top.get_yticklabels()] == [
        "pretrained: top-1", "strong: top-1 (2/3 seeds agree)"]
    assert [t.get_text() for t in bottom.get_yticklabels()] == ["pgd2: PGD"]
    heights = [axis.get_position().height for axis in figure.axes]
    assert [h / heights[1] for h in heights] == pytest.approx([2, 1, 3], rel=0.05)


def test_forest_plot_without_comparisons_says_so(tmp_path, kept_figures):
    figures.forest_plot([], tmp_path / "differences.png")
    (figure,) = kept_figures
    (axis,) = figure.axes
    assert [t.get_text() for t in axis.texts] == ["no comparisons yet"]
    assert not axis.axison and (tmp_path / "differences.png").stat().st_size > 0


def _photos(tmp_path, labels):
    """A photo per test image, red = 10 x its index; its right half green too."""
    records = []
    for i, label in enumerate(labels):
        photo = Image.new("RGB", (20, 10), (10 * i, 0, 0))
        photo.paste((10 * i, 100, 0), (10, 0, 20, 10))
        photo.save(tmp_path / f"{i}.png")
        records.append(Record(f"{i}.png", tmp_path / f"{i}.png", int(label)))
    return records


def test_confusion_figures_show_true_rows_log_counts_and_a_photo_of_each_mistake(
        tmp_path, kept_figures):
    """True a a a b b c called a b b b c c (rows = true class): the matrix image is the
    counts with empty cells masked, on a log scale from 1 to the largest count; the pairs
    figure has (a, b) then (b, c), each side a photo of that class called the other when
    there is one (image 1 is an a called b, image 4 a b called c), else any photo of it
    (no b was called a: image 3, the first b), cropped as the classifier saw it (image 1
    to its green half)."""
    labels, predicted = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 2, 2])
    records = _photos(tmp_path, labels)
    records[1] = dataclasses.replace(records[1], crop=(10, 0, 20, 10))
    assert figures.write_confusions(tmp_path, ["a", "b", "c"], records, labels,
                                    np.eye(3)[predicted]) == figures.FILES
    matrix, pairs = kept_figures
    axes = matrix.axes[0]
    (image,) = axes.images
    shown = image.get_array()
    assert shown.data.tolist() == [[1, 2, 0], [0, 1, 1], [0, 0, 1]]
    assert shown.mask.tolist() == [[False, False, True], [True, False, False],
                                   [True, True, False]]
    assert (image.norm.vmin, image.norm.vmax) == (1, 2)
    assert type(image.norm).__name__ == "LogNorm"
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("predicted class", "true class")
    assert axes.get_title() == "Confusion matrix, 6 test images, 3 classes"
    assert matrix.axes[1].get_ylabel() == "test images (log scale)"  # the colour bar

    titles = [axis.get_title() for axis in pairs.axes]
    assert titles == ["a\ncalled b: 2", "b\ncalled a: 0", "b\ncalled c: 1", "c\ncalled b: 0"]
    corner = [axis.images[0].get_array()[0, 0].tolist() for axis in pairs.axes]
    assert corner == [[10, 100, 0], [30, 0, 0], [40, 0, 0], [50, 0, 0]]  # 1, 3, 4, 5
    assert all(not axis.axison for axis in pairs.axes)
    for name in figures.FILES.values():
        assert (tmp_path / name).stat().st_size > 0


def test_the_scale_runs_from_one_to_the_largest_count_and_no_confusion_is_said(
        tmp_path, kept_figures):
    """Counts 3 and 2 on the diagonal: the scale is 1-3 (1, not the smallest count); one
    image a class: 1-2 (a log scale needs two ends). A class without test images gets no
    accuracy; long class names are cut to keep titles readable."""
    for folder, labels in (("three", [0, 0, 0, 1, 1]), ("one", [0, 1])):
        (tmp_path / folder).mkdir()
        labels = np.array(labels)
        figures.write_confusions(tmp_path / folder, ["a", "b", "c"],
                                 _photos(tmp_path / folder, labels), labels,
                                 np.eye(3)[labels])
    (three, pairs, one, _) = kept_figures
    assert (three.axes[0].images[0].norm.vmin, three.axes[0].images[0].norm.vmax) == (1, 3)
    assert (one.axes[0].images[0].norm.vmin, one.axes[0].images[0].norm.vmax) == (1, 2)
    assert [axis.get_title() for axis in pairs.axes] == ["no confusions", ""]
    assert all(not axis.images and not axis.axison for axis in pairs.axes)
    assert (tmp_path / "one" / "per_class.csv").read_text().splitlines()[1:] == [
        "a,1,1,1.0000,,0", "b,1,1,1.0000,,0", "c,0,0,,,0"]

    names = ["Black-footed Albatross of the far north", "Laysan Albatross of the south seas"]
    labels, predicted = np.array([0, 1]), np.array([1, 1])
    kept_figures.clear()
    figures.write_confusions(tmp_path, names, _photos(tmp_path, labels), labels,
                             np.eye(2)[predicted])
    assert kept_figures[1].axes[0].get_title() == (  # 28 and 20 characters
        "Black-footed Albatross of th\ncalled Laysan Albatross of : 1")


def test_confusion_matrix_and_per_class_csv_on_a_hand_worked_example(tmp_path):
    """Rows are the true class: true a a a b b c called a b b b c c."""
    labels, predicted = np.array([0, 0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 2, 2])
    counts = figures.confusion_matrix(labels, predicted, 3)
    assert counts.tolist() == [[1, 2, 0], [0, 1, 1], [0, 0, 1]] and counts.dtype == np.int64
    records = []
    for i in range(6):
        Image.new("RGB", (8, 8)).save(tmp_path / f"{i}.png")
        records.append(Record(f"{i}.png", tmp_path / f"{i}.png", int(labels[i])))
    figures.write_confusions(tmp_path, ["a", "b", "c"], records, labels, np.eye(3)[predicted])
    rows = (tmp_path / "per_class.csv").read_text().splitlines()
    assert rows == ["class,test_images,correct,accuracy,most_called,times",
                    "a,3,1,0.3333,b,2", "b,2,1,0.5000,c,1", "c,1,1,1.0000,,0"]


def test_confused_pairs_on_a_hand_worked_matrix():
    """Pairs (a, b), a < b, by images of either called the other: (0, 1) 2 + 1, (2, 3) 1 + 1,
    (0, 3) 1 + 0; pairs never confused and the diagonal left out. 20 classes each confused
    once with every other: 190 tied pairs, the first 10 by default, in reading order."""
    counts = np.array([[5, 2, 0, 1], [1, 6, 0, 0], [0, 0, 7, 1], [0, 0, 1, 8]])
    assert figures.confused_pairs(counts) == [(0, 1, 2, 1), (2, 3, 1, 1), (0, 3, 1, 0)]
    tied = figures.confused_pairs(np.ones((20, 20), np.int64) - np.eye(20, dtype=np.int64))
    assert tied == [(0, b, 1, 1) for b in range(1, 11)]
