"""Test-time refine (`--tta whole+crop`, as WS-DAN's): each test image's class probabilities
on the whole photo and on its crop, averaged. One model gives both: it trains on each image
whole or cropped (`WHOLE_SHARE` of the time whole, drawn from the image's augmentation
seed)."""

from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path

import torch

from shared import data, engine, results, stats

WHOLE_SHARE = 0.5  # how often a training image is shown whole


def whole_and_crop(out: Path, seed: int, rt: engine.Runtime, test: list[data.Record]):
    """`train_classifier`'s `after` for --tta whole+crop: the tested model's class
    probabilities on each test crop (fit's predictions) and on the whole photo, averaged;
    their log is the row's test logits (tta_predictions.npz, test_top1), and the crop
    alone stays in test_predictions.npz as crop_view_top1."""
    def after(model, spec, loaders, fitted):
        whole = copy.copy(loaders.test.dataset)
        whole.records = [replace(r, crop=None) for r in whole.records]
        loader = data.make_loader(whole, loaders.test.batch_size, train=False,
                                  workers=loaders.test.num_workers, seed=seed)
        whole_logits = engine.evaluate(model, spec, loader, rt, fitted["channels_last"],
                                       outputs=True)["logits"]
        crop_logits = torch.from_numpy(fitted["test_logits"]).float()
        averaged = (crop_logits.softmax(1) + whole_logits.softmax(1)) / 2
        labels = fitted["test_labels"]
        scores = results.score_predictions(
            out, "tta_predictions.npz", [r.image_id or r.key for r in test],
            labels, averaged.clamp_min(1e-30).log().numpy(),
            {"test_top1": 1, "test_top5": 5}, write=rt.main)
        crop_view = results.merge(*(  # fit's own file and logits: the same figures
            results.scored(f"crop_view_top{k}", results.hits(fitted["test_logits"], labels, k),
                           engine.PREDICTIONS) for k in (1, 5)))
        logits = scores.pop("logits")
        ece = {"metrics": {"test_ece": stats.expected_calibration_error(logits, labels)}}
        return {**results.merge(crop_view, scores, ece), "test_logits": logits}
    return after
