"""Task 8's evaluation protocol, the same for every backbone: a seeded share of the training
labels (or N photos a class), frozen features, a linear probe and a kNN classifier on them
(the full fine-tune is the engine's)."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from shared import data, engine, models, results, stats
from shared.data import Record
from shared.errors import DataError


def label_subset(records: list[Record], budget: float | str, seed: int) -> list[Record]:
    """A seeded, class-balanced share (`budget` a fraction: at least one image of every
    class), or exactly N images of every class (`budget` "N/class")."""
    by_class: dict[int, list[Record]] = {}
    for r in records:
        by_class.setdefault(r.label, []).append(r)
    per_class = int(budget.split("/")[0]) if isinstance(budget, str) else None
    generator = torch.Generator().manual_seed(seed)
    chosen = []
    for label in sorted(by_class):
        group = by_class[label]
        if per_class is not None and len(group) < per_class:
            raise DataError(f"--label-fractions {budget}: class {label} has only {len(group)} "
                            f"training images")
        count = per_class or max(1, round(budget * len(group)))
        order = torch.randperm(len(group), generator=generator).tolist()
        chosen += [group[i] for i in order[:count]]
    return chosen


def budget_folder(budget: float | str) -> str:
    return (f"per-class-{budget.split('/')[0]}" if isinstance(budget, str)
            else f"fraction-{budget:g}")


@torch.no_grad()
def extract(backbone: nn.Module, spec, records: list[Record], transform, need, rt,
            workers: int, batch: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """Features of every record, in order, on the host. Every DDP process extracts them
    all (a loader sharded over processes would leave each with a part), so the probes see
    the whole split in each."""
    backbone.eval()  # batch norm on its running statistics; nothing here updates it
    cuda = rt.device.type == "cuda"
    loader = torch.utils.data.DataLoader(data.ImageDataset(records, transform, need), batch,
                                         num_workers=workers, pin_memory=cuda)
    feats, labels = [], []
    for pixels, y in loader:
        images = engine.model_input(pixels, spec, rt, channels_last=False)
        feats.append(backbone(images).float())  # kept on the device: no wait a batch
        labels.append(y)
    return torch.cat(feats).cpu(), torch.cat(labels)


def linear_probe(train_x, train_y, classes: int, epochs: int, seed: int) -> nn.Linear:
    """A softmax classifier on centred frozen features divided by one scale, their mean
    spread (full-batch AdamW), returned with that folded into its weights: it reads raw
    features, as the head LP-FT's fine-tune starts from. One scale, not one a feature: a
    unit that barely varies over a few labelled photos would get its weight divided by that
    spread (x20,000 on the demo), and the fine-tune's first step, which moves it a little,
    would throw the logits into the thousands and wreck the features."""
    mean = train_x.mean(0)
    scale = train_x.std(0).mean() if len(train_x) > 1 else train_x.new_tensor(0.0)
    scale = scale if scale > 1e-6 else train_x.new_tensor(1.0)
    torch.manual_seed(seed)
    probe = nn.Linear(train_x.shape[1], classes)
    optimizer = torch.optim.AdamW(probe.parameters(), 1e-2, weight_decay=1e-4)
    standardised = (train_x - mean) / scale
    for _ in range(epochs):
        loss = F.cross_entropy(probe(standardised), train_y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():  # w . (x - mean) / s + b = (w / s) . x + b - (w / s) . mean
        weight = probe.weight / scale
        probe.bias -= weight @ mean
        probe.weight.copy_(weight)
    return probe.requires_grad_(False)


def probe_start(backbone_state: dict, model_name: str, classes: int, image_size: int,
                probe: nn.Linear) -> dict:
    """LP-FT's starting weights (Kumar et al. 2022): the backbone with the linear probe as
    its head, so that fine-tuning begins where the probe ends and its first steps do not
    wreck the features to fit a random head."""
    from pretrain import heads

    model, spec = models.build_model(model_name, classes, "none", image_size)
    models.load_weights(model, spec, backbone_state, "the pre-trained backbone")
    with torch.no_grad():
        for _, _, linear in heads(model, spec):
            linear.weight.copy_(probe.weight)
            linear.bias.copy_(probe.bias)
    return model.state_dict()


def knn_gate(trained: tuple, random: list | None, train_y, val_y, classes: int, k: int
             ) -> dict:
    """Table 7's gate for SimCLR from random (did pre-training learn anything?): kNN on the
    validation split with the pre-trained (train, val) features against the same with a
    random network's (None: no validation split, not measured); passes when the
    pre-trained ones are right on more images with McNemar's p < 0.01."""
    name = "val kNN above random-init features' (McNemar p)"
    if random is None:
        return results.gate(f"{name}: no validation split", None, 0.01, False)
    hits = [(knn_scores(x, train_y, held_out, classes, k).argmax(1) == val_y).numpy()
            for x, held_out in (trained, random)]
    p = stats.mcnemar_p(hits[1], hits[0])
    return results.gate(name, p, 0.01, hits[0].sum() > hits[1].sum() and p < 0.01)


def knn_scores(train_x, train_y, test_x, classes: int, k: int) -> torch.Tensor:
    """Cosine-similarity kNN, votes weighted by exp(similarity / 0.07) (Wu et al. 2018);
    returns the log of each class's votes for the test features (-inf: none), scores whose
    argmax is the vote and which fit a float16 predictions file."""
    train_x, test_x = F.normalize(train_x, dim=1), F.normalize(test_x, dim=1)
    similarity, index = (test_x @ train_x.T).topk(min(k, len(train_x)), dim=1)
    votes = torch.zeros(len(test_x), classes, dtype=torch.float64).scatter_add_(
        1, train_y[index], (similarity.double() / 0.07).exp())
    return votes.log()


def knn_monitor(backbone: nn.Module, spec, train: list[Record], held_out: list[Record],
                classes: int, k: int, view: tuple, workers: int | None, rt,
                random_features: list | None = None) -> dict:
    """The online monitor: `val_knn_top1`, kNN top-1 on `held_out` with every `train` image's
    label, scored as the final evaluation scores it (float16 scores,
    `results.score_predictions`), and with `random_features` (a random network's train and
    held-out features) `val_knn_gate_p`, the gate's value (`knn_gate`) at this point of
    pre-training. `view` is the evaluation's (transform, decode need)."""
    transform, need = view
    workers = data.loader_workers(workers, rt.device.type == "cuda")
    train_x, train_y = extract(backbone, spec, train, transform, need, rt, workers)
    x, y = extract(backbone, spec, held_out, transform, need, rt, workers)
    scores = knn_scores(train_x, train_y, x, classes, k).numpy()
    keys = [r.image_id or r.key for r in held_out]
    record = {"val_knn_top1": results.score_predictions(
        Path("."), "", keys, y.numpy(), scores, {"knn_top1": 1}, write=False
    )["metrics"]["knn_top1"]}
    if random_features is not None:
        record["val_knn_gate_p"] = knn_gate((train_x, x), random_features, train_y, y,
                                            classes, k)["value"]
    return record
