"""The uncertainty of an accuracy and of a difference between two: Wilson score intervals,
paired bootstrap intervals over images (and over seeds and images, for rows trained with
several seeds) and exact McNemar tests, plus calibration error."""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def wilson_interval(correct: int, total: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a proportion (fractions): unlike the normal approximation it
    stays inside [0, 1] and keeps its coverage near 0% and 100% accuracy."""
    if total <= 0:
        return (0.0, 1.0)
    z = stats.norm.ppf(0.5 + confidence / 2)
    p = correct / total
    centre = (p + z * z / (2 * total)) / (1 + z * z / total)
    half = z * math.sqrt(p * (1 - p) / total + z * z / (4 * total * total)) / (1 + z * z / total)
    return (max(0.0, centre - half), min(1.0, centre + half))


def mcnemar_p(a_correct: np.ndarray, b_correct: np.ndarray) -> float:
    """Exact two-sided McNemar p-value: a binomial test (p = 1/2) on the images exactly one
    of the two classifiers gets right."""
    a_correct, b_correct = np.asarray(a_correct, bool), np.asarray(b_correct, bool)
    only_a = int(np.sum(a_correct & ~b_correct))
    only_b = int(np.sum(~a_correct & b_correct))
    if only_a + only_b == 0:
        return 1.0
    return float(stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def paired_bootstrap(a_correct: np.ndarray, b_correct: np.ndarray, resamples: int = 2000,
                     seed: int = 0, confidence: float = 0.95) -> tuple[float, float, float]:
    """Accuracy of b minus a (fractions) and its percentile interval over `resamples`
    resamplings of the images, each drawing the same images for both."""
    a_correct = np.asarray(a_correct, np.float64)
    b_correct = np.asarray(b_correct, np.float64)
    if a_correct.shape != b_correct.shape:
        raise ValueError("paired_bootstrap needs the same images for both")
    difference = b_correct - a_correct
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(difference), size=(resamples, len(difference)))
    means = difference[draws].mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(difference.mean()), float(low), float(high)


def two_level_bootstrap(values: np.ndarray, resamples: int = 2000, seed: int = 0,
                        confidence: float = 0.95) -> tuple[float, float, float]:
    """The mean of a (seeds, images) matrix of per-image values (hits, or paired
    differences of hits) and its percentile interval when both are samples: the training
    runs (seeds) and the test photos. Each resample draws the images with replacement (the
    same draw for every seed: all of them were tested on the same photos), then the seeds
    with replacement. Seeds that agree image by image give the bootstrap over images alone
    (`paired_bootstrap`'s interval, the same draws); seeds that disagree widen it."""
    values = np.atleast_2d(np.asarray(values, np.float64))
    rng = np.random.default_rng(seed)
    images = rng.integers(0, values.shape[1], size=(resamples, values.shape[1]))
    seeds = rng.integers(0, len(values), size=(resamples, len(values)))
    # (resamples, seeds): each seed's mean over a row's image draw (a seed at a time: memory)
    per_seed = np.stack([row[images].mean(axis=1) for row in values], axis=1)
    means = np.take_along_axis(per_seed, seeds, axis=1).mean(axis=1)
    low, high = np.quantile(means, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(values.mean()), float(low), float(high)


def bootstrap_mean(values, resamples: int = 2000, seed: int = 0,
                   confidence: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of per-image values (e.g. deletion AUCs)."""
    values = np.asarray(values, np.float64)
    if len(values) == 0:
        return (float("nan"), float("nan"))
    draws = np.random.default_rng(seed).integers(0, len(values), size=(resamples, len(values)))
    low, high = np.quantile(values[draws].mean(axis=1), [(1 - confidence) / 2,
                                                         (1 + confidence) / 2])
    return float(low), float(high)


def expected_calibration_error(logits: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """ECE: the gap between confidence and accuracy, averaged over `bins` equal-width
    confidence bins weighted by their share of the images (Guo et al. 2017)."""
    logits = np.asarray(logits, np.float64)
    shifted = np.exp(logits - logits.max(axis=1, keepdims=True))
    probabilities = shifted / shifted.sum(axis=1, keepdims=True)
    confidence = probabilities.max(axis=1)
    correct = probabilities.argmax(axis=1) == np.asarray(labels)
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(confidence, edges[1:-1], right=True), 0, bins - 1)
    error = 0.0
    for b in range(bins):
        chosen = which == b
        if chosen.any():
            error += chosen.mean() * abs(confidence[chosen].mean() - correct[chosen].mean())
    return float(error)
