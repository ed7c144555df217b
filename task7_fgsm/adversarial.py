"""Adversarial training and robust evaluation, on the attacks of fgsm.py: the training epoch
written out (each batch, or each image, replaced by its FGSM or PGD example on the current
model with probability `prob`), the validation that chooses the most robust epoch and stops
a run whose robustness collapses (catastrophic overfitting), and the test split attacked at
every budget."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from fgsm import UNBOUNDED, Normalized, fgsm, gradient_masking_checks, pgd, worst_case

from shared import engine, results, stats

GUARD_IMAGES = 128  # the guard's fixed validation batch (Wong et al. watch one minibatch)


def attack_precision(rt: engine.Runtime):
    """Attacks run under the run's autocast when it is bf16, whose exponent range is fp32's,
    so input gradients do not underflow to zero (a masked gradient); fp16 runs attack in
    fp32."""
    return torch.autocast(rt.device.type, torch.bfloat16,
                          enabled=rt.amp_dtype == torch.bfloat16)


@dataclass(frozen=True)
class Adversary:
    """How training attacks (the --adv-* flags): FGSM (`random_start`: "fast" FGSM) or PGD
    of `steps` at `eps`/255, on a share `prob` of each batch's images, drawn at random
    (`mode` "sample", Kurakin et al. 2017's mix), or on the whole batch with probability
    `prob` (`mode` "batch", the seed's coin flip)."""
    attack: str = "fgsm"
    eps: float = 4.0
    steps: int = 3
    random_start: bool = False
    mode: str = "sample"
    prob: float = 0.5

    def chosen(self, count: int) -> torch.Tensor:
        """Which of a batch's images to attack, drawn on the host, so that picking them
        needs no wait for the device (a boolean mask on a GPU tensor would)."""
        if self.mode == "batch":
            return torch.arange(count if torch.rand(()) < self.prob else 0)
        return torch.randperm(count)[:round(self.prob * count)].sort().values

    def perturb(self, attacked: Normalized, images: torch.Tensor, labels: torch.Tensor,
                rt: engine.Runtime) -> torch.Tensor:
        """The normalised batch with the chosen images replaced by their adversarial
        examples, made on `attacked` (the current model with its normalisation) in [0, 1]
        pixels."""
        chosen = self.chosen(len(images))
        if len(chosen) == 0:
            return images
        chosen = chosen.to(images.device, non_blocking=True)
        pixels = (images.index_select(0, chosen) * attacked.std + attacked.mean).clamp(0, 1)
        targets = labels.index_select(0, chosen)
        with attack_precision(rt):
            if self.attack == "pgd":
                adversarial = pgd(attacked, pixels, targets, self.eps, steps=self.steps)
            else:
                adversarial = fgsm(attacked, pixels, targets, self.eps,
                                   random_start=self.random_start)
        return images.index_copy(0, chosen, ((adversarial - attacked.mean) / attacked.std
                                             ).to(images.dtype))


def adversarial_epoch(adversary: Adversary):
    """The engine's `train_epoch` for adversarial training: each step trains on the batch
    as `adversary` attacks it on the model as it is at that step."""
    def train_epoch(loop: engine.Loop, net, loader, epoch: int) -> torch.Tensor:
        meter = engine.EpochMeter(loop, epoch, len(loader))
        # the model with its normalisation, so that attacks work on [0, 1] pixels
        attacked = Normalized(loop.model, loop.spec.mean, loop.spec.std).to(loop.rt.device)
        for step, (images, labels) in enumerate(loader):
            images, labels = loop.to_device(images, labels)
            images = adversary.perturb(attacked, images, labels, loop.rt)
            loss, logits = loop.forward(net, images, labels)
            meter.check(step, loss)
            loop.update(loss)
            meter.add(step, loss, logits, labels)
        return meter.total()
    return train_epoch


def pgd_hits(attacked, batches, eps: float, steps: int, seed: int, rt, total: int
             ) -> np.ndarray:
    """Whether each of the `total` images of `batches` ((uint8 images, labels) pairs, each
    DDP process its share) is still right after PGD at `eps`, in the dataset's order; the
    random starts are drawn from `seed`, so each epoch is attacked from the same starts."""
    generator = torch.Generator(rt.device).manual_seed(seed + rt.rank)
    right = []
    for images, labels in batches:
        pixels, labels = images.to(rt.device).float() / 255, labels.to(rt.device)
        with attack_precision(rt):
            adversarial = pgd(attacked, pixels, labels, eps, steps=steps, generator=generator)
            with torch.no_grad():
                right.append((attacked(adversarial).argmax(1) == labels).to(torch.uint8))
    return engine.gather_in_order(torch.cat(right), total, rt).bool().cpu().numpy()


def pgd_correct(attacked, batches, eps: float, steps: int, seed: int, rt,
                total: int) -> tuple[int, int]:
    """How many of `pgd_hits`' images are right, and how many there are."""
    hits = pgd_hits(attacked, batches, eps, steps, seed, rt, total)
    return int(hits.sum()), len(hits)


GATE_PGD_STEPS = 10


def robustness_gate(model, standard, spec, loader, eps: float, seed: int, rt) -> dict:
    """Table 6's gate (did adversarial training leave robustness?): PGD-10 at the training
    budget `eps` on the validation `loader`, the trained model against the `standard` one
    (either None: not measured) on the same images from the same starts; it passes when the
    trained model is right on more of them with McNemar's p < 0.01. Returns scores with
    both accuracies and the gate."""
    name = f"val PGD-{GATE_PGD_STEPS}@{eps:g}/255 above standard's (McNemar p)"
    if standard is None or loader is None:
        missing = "no standard model (--standard)" if loader else "no validation split"
        return {"gates": [results.gate(f"{name}: {missing}", None, 0.01, False)]}
    total = len(loader.dataset)
    hits = [pgd_hits(Normalized(net, spec.mean, spec.std).to(rt.device).eval(), loader, eps,
                     GATE_PGD_STEPS, seed, rt, total) for net in (model, standard)]
    p = stats.mcnemar_p(hits[1], hits[0])
    key = f"val_pgd{GATE_PGD_STEPS}_top1"
    return {"metrics": {key: float(hits[0].mean()), f"standard_{key}": float(hits[1].mean())},
            "gates": [results.gate(name, p, 0.01, hits[0].sum() > hits[1].sum() and p < 0.01)]}


def robust_validation(eps: float, steps: int, seed: int, select_robust: bool,
                      guard_points: float):
    """The engine's `validate` for adversarial training: clean `val_top1`, and
    `val_robust_top1` (PGD-`steps` at `eps` over the validation split) when the best epoch
    is the most robust; with `guard_points` > 0 the catastrophic-overfitting guard's
    `guard_robust_top1` on a fixed batch, and `stop` once it falls more than that many
    points below its best."""
    guard_batch = []  # decoded once: the same images every epoch

    def validate(loop: engine.Loop, loaders, history: list[dict]) -> dict:
        scores = engine.validate_top1(loop, loaders, history)
        rt = loop.rt
        attacked = Normalized(loop.model, loop.spec.mean, loop.spec.std).to(rt.device)
        if select_robust:
            right, total = pgd_correct(attacked, loaders.val, eps, steps, seed, rt,
                                       len(loaders.val.dataset))
            scores["val_robust_top1"] = right / total
        if guard_points > 0:
            # every process attacks the same batch, so that all of them stop together
            if not guard_batch:
                dataset = loaders.val.dataset
                batch = [dataset[i] for i in range(min(GUARD_IMAGES, len(dataset)))]
                guard_batch.append((torch.stack([image for image, _ in batch]),
                                    torch.tensor([label for _, label in batch])))
            right, total = pgd_correct(attacked, guard_batch, eps, steps, seed,
                                       engine.Runtime(rt.device, amp_dtype=rt.amp_dtype),
                                       len(guard_batch[0][1]))
            accuracy = scores["guard_robust_top1"] = right / total
            best = max((h["guard_robust_top1"] for h in history if "guard_robust_top1" in h),
                       default=accuracy)
            if best - accuracy > guard_points / 100:
                scores["stop"] = (f"catastrophic overfitting: PGD-{steps} accuracy at "
                                  f"{eps:g}/255 on {total} validation images fell from "
                                  f"{best:.1%} to {accuracy:.1%}")
        return scores

    return validate


def guard_record(guard_points: float, steps: int, eps: float, fitted: dict,
                 val_images: int) -> dict:
    """metrics.json's `overfit_guard`: its setting and whether (and where) it stopped."""
    stopped_at = len(fitted["history"]) if fitted["stopped"] else None
    return {"threshold_points": guard_points, "images": min(GUARD_IMAGES, val_images),
            "attack": f"pgd{steps}@{eps:g}/255",
            "stopped_at_epoch": stopped_at, "stopped": fitted["stopped"] or None}


def robust_accuracy(model, spec, loader, *, eps: list[float], pgd_steps: int, restarts: int,
                    seed: int, rt: engine.Runtime, out: Path) -> dict:
    """Clean top-1 and top-1 under FGSM, PGD-`pgd_steps` (worst of `restarts`) and the worst
    of both at every test budget in `eps` (/255), and under an unbounded PGD, over the
    loader's split (every DDP process's share gathered), each backed by a predictions file
    in `out` (written by the main process); then the gradient-masking checks. Returns
    `results.merge`d scores: metrics `clean_top1`, `robust_top1` {"fgsm@4/255": .., ...},
    `unbounded_top1` and `gradient_masking`, intervals and files keyed `clean_top1` and
    `robust_top1:<attack>`."""
    attacked = Normalized(model, spec.mean, spec.std).to(rt.device).eval()
    pgd_name = f"pgd{pgd_steps}"
    names = ["clean", "unbounded"] + [f"{attack}@{budget:g}/255" for budget in eps
                                      for attack in ("fgsm", pgd_name, "worst")]
    # restart r draws its starts from its own generator: a run with more restarts attacks
    # from the same starts and more, so restarts never raise robust accuracy
    starts = [torch.Generator(rt.device).manual_seed(seed + 1000 * r + rt.rank)
              for r in range(restarts)]

    def scores(pixels):  # rounded as the predictions files keep them: the worst case is
        with torch.no_grad():  # chosen on the logits that are scored
            return attacked(pixels).float().half().float()

    records = loader.dataset.records
    kept = []  # per batch: logits (attacks, images, classes), on the device
    begin, done = time.perf_counter(), 0
    for images, labels in loader:
        pixels, labels = images.to(rt.device).float() / 255, labels.to(rt.device)
        done += len(labels)
        with attack_precision(rt):
            batch = [scores(pixels), scores(pgd(attacked, pixels, labels, UNBOUNDED,
                                                steps=pgd_steps, random_start=False))]
            for budget in eps:
                single = scores(fgsm(attacked, pixels, labels, budget))
                worst_start = worst_case([scores(pgd(attacked, pixels, labels, budget,
                                                     steps=pgd_steps, generator=start))
                                          for start in starts], labels)
                batch += [single, worst_start, worst_case([single, worst_start], labels)]
        kept.append(torch.stack(batch))
        if rt.main:
            print(f"attacked {min(done * rt.world_size, len(records))}/{len(records)} test "
                  f"images ({time.perf_counter() - begin:.0f} s)", flush=True)
    logits = engine.gather_in_order(torch.cat(kept, dim=1).transpose(0, 1), len(records), rt)
    labels = np.array([r.label for r in records], dtype=np.int64)
    keys = [r.image_id or r.key for r in records]
    parts = []
    for name, attack_logits in zip(names, logits.transpose(0, 1).cpu().numpy(), strict=True):
        file = f"predictions_{name.replace('@', '_').replace('/', '_')}.npz"
        key = {"clean": "clean_top1", "unbounded": "unbounded_top1"}.get(name,
                                                                       f"robust_top1:{name}")
        parts.append(results.score_predictions(out, file, keys, labels, attack_logits,
                                               {key: 1}, write=rt.main))
    scores = results.merge(*parts)
    metrics = scores["metrics"]
    robust = {name.split(":", 1)[1]: metrics.pop(name)
              for name in list(metrics) if name.startswith("robust_top1:")}
    metrics["robust_top1"] = robust
    metrics["gradient_masking"] = gradient_masking_checks(
        metrics["clean_top1"], robust, round(metrics["unbounded_top1"] * len(records)),
        len(records), parts[0]["logits"].shape[1])
    return scores
