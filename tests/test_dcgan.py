"""Task 4: the hand-written conditional DCGAN, its training steps, resume, the synthetic
images (training split only) and the GAN quality measures."""

import json

import diffaugment
import gan
import numpy as np
import pytest
import torch
from conftest import assert_predictions_reproduce, run_cli
from dcgan import Discriminator, Generator

from shared import checkpoint, data, engine, models
from task4_dcgan import train as dcgan_train


@pytest.mark.parametrize("size", [32, 64, 128])
def test_shapes_and_range_at_every_size(size):
    torch.manual_seed(0)
    G, D = Generator(5, size, z_dim=16, width=8), Discriminator(5, size, width=8)
    y = torch.tensor([0, 1, 2, 4])
    images = G(torch.randn(4, 16) * 3, y)
    assert images.shape == (4, 3, size, size)
    assert images.min() >= -1 and images.max() <= 1 and images.std() > 0
    assert D(images, y).shape == (4,)
    with pytest.raises(ValueError, match="image size 48"):
        Generator(5, 48)


def test_generator_uses_its_label():
    torch.manual_seed(0)
    G = Generator(3, 32, z_dim=16, width=8).eval()
    z = torch.randn(1, 16).repeat(3, 1)
    images = G(z, torch.tensor([0, 1, 2]))
    scale = images.abs().mean()  # small at initialisation; differences are relative to it
    assert (images[0] - images[1]).abs().mean() > 0.02 * scale
    assert (images[1] - images[2]).abs().mean() > 0.02 * scale
    torch.testing.assert_close(G(z[:1], torch.tensor([1])), images[1:2])  # same input, same image


def test_discriminator_uses_the_label():
    torch.manual_seed(0)
    D = Discriminator(3, 32, width=8).eval()
    x = torch.randn(1, 3, 32, 32).repeat(2, 1, 1, 1)
    logits = D(x, torch.tensor([0, 2]))
    assert logits[0] != logits[1]


def test_one_d_step_and_one_g_step_change_the_right_parameters():
    torch.manual_seed(0)
    G, D = Generator(4, 32, z_dim=16, width=8), Discriminator(4, 32, width=8)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    real, y = torch.rand(8, 3, 32, 32) * 2 - 1, torch.randint(0, 4, (8,))

    def params(model):
        return [p.detach().clone() for p in model.parameters()]

    def changed(before, model):
        return [not torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True)]

    g0, d0 = params(G), params(D)
    fake = G(torch.randn(8, 16), y)
    loss_d, d_real, d_fake = gan.d_step(D, opt_d, real, fake, y)
    assert torch.isfinite(loss_d) and 0 < d_real < 1 and 0 < d_fake < 1
    assert all(changed(d0, D)) and not any(changed(g0, G))
    # in the d step, G received no gradient at all
    assert all(p.grad is None for p in G.parameters())

    d1 = params(D)
    loss_g = gan.g_step(D, opt_g, fake, y)
    assert torch.isfinite(loss_g)
    assert all(changed(g0, G)) and not any(changed(d1, D))


def test_hinge_and_bce_losses_on_hand_worked_logits():
    d_real, d_fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-3.0, 0.0, 1.5])
    # hinge: mean relu(1 - real) = (0 + 0.5 + 2) / 3; mean relu(1 + fake) = (0 + 1 + 2.5) / 3
    assert gan.d_loss(d_real, d_fake, "hinge").item() == pytest.approx(2.5 / 3 + 3.5 / 3)
    assert gan.g_loss(d_fake, "hinge").item() == pytest.approx(-(-3.0 + 0.0 + 1.5) / 3)
    softplus = torch.nn.functional.softplus  # BCE: -log sigmoid(x) = softplus(-x)
    assert gan.d_loss(d_real, d_fake).item() == pytest.approx(
        (softplus(-d_real).mean() + softplus(d_fake).mean()).item())
    assert gan.g_loss(d_fake).item() == pytest.approx(softplus(-d_fake).mean().item())


def test_spectral_norm_brings_each_weight_to_unit_largest_singular_value():
    from torch.nn.utils import parametrize

    torch.manual_seed(0)
    D = Discriminator(4, 32, width=8, spectral_norm=True)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in D.modules())
    normed = [m for m in D.modules() if parametrize.is_parametrized(m, "weight")]
    assert len(normed) == 5  # three convolutions, the logit and the class embedding
    for _ in range(30):  # power iterations run in training forward passes
        D(torch.randn(2, 3, 32, 32), torch.tensor([0, 1]))
    D.eval()
    for m in normed:
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert sigma.item() == pytest.approx(1.0, abs=1e-3)
        raw = m.parametrizations.weight.original.detach().flatten(1)
        assert torch.linalg.matrix_norm(raw, ord=2).item() != pytest.approx(1.0, abs=0.05)
    # training steps: D sees real and generated images before one backward (each forward
    # updates u), with the hinge loss
    D.train()
    G = Generator(4, 32, z_dim=8, width=8)
    opt_d, opt_g = (torch.optim.Adam(m.parameters(), 1e-4) for m in (D, G))
    y = torch.tensor([0, 1, 2, 3])
    fake = G(torch.randn(4, 8), y)
    loss_d, _, _ = gan.d_step(D, opt_d, torch.rand(4, 3, 32, 32) * 2 - 1, fake, y,
                              loss_kind="hinge")
    assert torch.isfinite(loss_d) and torch.isfinite(gan.g_step(D, opt_g, fake, y,
                                                                loss_kind="hinge"))


def test_the_ema_of_g_is_the_running_average_of_its_weights():
    from dcgan import EMA

    torch.manual_seed(0)
    G = Generator(3, 32, z_dim=8, width=8)
    ema = EMA(G, decay=0.9)
    start = [p.detach().clone() for p in G.parameters()]
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    ema.update(G)
    for average, old in zip(ema.model.parameters(), start, strict=True):
        torch.testing.assert_close(average, old + 0.1)  # 0.9 old + 0.1 (old + 1)
    assert all(not p.requires_grad for p in ema.model.parameters())


def test_the_gan_test_gate_passes_real_photos_and_fails_an_untrained_generator():
    """20 classes, each a colour; the "classifier trained on real photos" is the nearest
    class colour. A "generator" that returns real photos passes (10 x chance = 50%); an
    untrained DCGAN's images do not."""
    torch.manual_seed(0)
    colours = torch.rand(20, 3)
    labels = torch.arange(20).repeat_interleave(5)
    photos = (colours[labels][:, :, None, None] * 255).round().to(torch.uint8).expand(
        -1, -1, 32, 32).contiguous()

    class NearestColour(torch.nn.Module):
        def forward(self, x):  # x normalised with mean 0, std 1: the pixels themselves
            return -torch.cdist(x.mean((2, 3)), colours)

    judge = (NearestColour(), None, {"mean": [0, 0, 0], "std": [1, 1, 1], "image_size": 32})
    passed = gan.gan_test_gate(gan.class_accuracy(judge, photos, labels, "cpu"), 20)
    assert passed["passed"] and passed["value"] == pytest.approx(20.0)
    untrained, _ = gan.generate(Generator(20, 32, z_dim=8, width=8).eval(), 5, 0, "cpu")
    failed = gan.gan_test_gate(gan.class_accuracy(judge, untrained, labels, "cpu"), 20)
    assert not failed["passed"] and failed["value"] < 10
    assert not gan.gan_test_gate(None, 20)["passed"]


def test_frechet_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(500, 4))
    assert gan.frechet_distance(a, a) == pytest.approx(0, abs=1e-6)
    shift = np.array([1.0, 2.0, 0.0, -1.0])
    # same covariance, means apart by `shift`: the distance is |shift|^2 = 6
    assert gan.frechet_distance(a, a + shift) == pytest.approx(6.0, abs=1e-6)
    # twice the spread: trace(S + 4S - 2 * 2S) = trace(S), plus the means' |m - 2m|^2
    expected = np.trace(np.cov(a.T)) + (a.mean(0) ** 2).sum()
    assert gan.frechet_distance(a, 2 * a) == pytest.approx(expected)


def test_kernel_inception_distance_matches_its_closed_form():
    """Features drawn uniformly from two small sets S and T: the squared MMD with the cubic
    kernel is mean k(S, S) + mean k(T, T) - 2 mean k(S, T), which the unbiased KID recovers;
    two samples of one distribution give about 0 (it can go below: unbiased)."""
    rng = np.random.default_rng(0)
    d = 3
    s_set = np.array([[1.0, 0, 0], [0, 1, 0], [0, 0, 1]])
    t_set = np.array([[1.0, 1, 0], [0, 1, 1]])

    def kernel(p, q):
        return (p @ q.T / d + 1) ** 3

    closed = kernel(s_set, s_set).mean() + kernel(t_set, t_set).mean() - \
        2 * kernel(s_set, t_set).mean()
    a, b = s_set[rng.integers(0, 3, 4000)], t_set[rng.integers(0, 2, 4000)]
    kid, std = gan.kernel_inception_distance(a, b, subsets=50, subset_size=1000)
    assert kid == pytest.approx(closed, abs=3 * std / np.sqrt(50) + 1e-3) and std > 0
    same, same_std = gan.kernel_inception_distance(a, s_set[rng.integers(0, 3, 4000)],
                                                           subsets=50, subset_size=1000)
    assert abs(same) < 3 * same_std / np.sqrt(50) + 1e-3 and same < 0.1 * closed
    with pytest.raises(ValueError, match="at least 2 images"):
        gan.kernel_inception_distance(a[:1], b)


def test_diffaugment_translation_and_cutout_move_and_blank_pixels_only():
    torch.manual_seed(0)
    x = torch.rand(16, 3, 32, 32) * 2 - 1 + 3  # values in [2, 4]: a zero can only be padding
    shifted = diffaugment.translation(x)
    assert shifted.shape == x.shape
    for image, out in zip(x, shifted, strict=True):
        rows, cols = torch.nonzero(out[0] != 0, as_tuple=True)
        top, left = int(rows.min()), int(cols.min())
        bottom, right = int(rows.max()) + 1, int(cols.max()) + 1
        dy = top if top > 0 else bottom - 32  # the shift: zeros come in from one side
        dx = left if left > 0 else right - 32
        assert abs(dy) <= 4 and abs(dx) <= 4  # 1/8 of 32
        torch.testing.assert_close(out[:, top:bottom, left:right],
                                   image[:, top - dy:bottom - dy, left - dx:right - dx])
    holed = diffaugment.cutout(x)
    blanked = holed[:, 0] == 0
    assert torch.equal(holed[:, :, ~blanked[0]][0], x[0][:, ~blanked[0]])  # rest unchanged
    assert all(0 < int(b.sum()) <= 16 * 16 for b in blanked)  # half the side, clipped
    assert torch.equal((holed == 0).all(1), blanked)  # every channel of the same square


def test_diffaugment_is_random_per_image_and_call_and_lets_gradients_reach_g():
    policy = ("color", "translation", "cutout")
    x = torch.rand(1, 3, 32, 32).repeat(8, 1, 1, 1) * 2 - 1
    torch.manual_seed(0)
    first = diffaugment.diff_augment(x, policy)
    again = diffaugment.diff_augment(x, policy)
    assert first.shape == x.shape and first.isfinite().all()
    assert not torch.equal(first[0], first[1])  # each image its own draw
    assert not torch.equal(first, again)  # and each call
    torch.manual_seed(0)
    assert torch.equal(diffaugment.diff_augment(x, policy), first)  # seeded: reproducible
    assert first.abs().max() < 6  # brightness +-0.5, saturation x2, contrast x1.5 of [-1, 1]
    assert diffaugment.diff_augment(x, ()) is x  # no policy: untouched, nothing drawn
    assert set(diffaugment.POLICIES) == set(dcgan_train.DIFFAUGMENT)

    torch.manual_seed(0)
    G, D = Generator(4, 32, z_dim=16, width=8), Discriminator(4, 32, width=8)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    y = torch.randint(0, 4, (8,))
    fake = G(torch.randn(8, 16), y)
    seen = []

    def spy(images):
        seen.append(images)
        return diffaugment.diff_augment(images, policy)

    gan.d_step(D, opt_d, x, fake, y, spy)
    assert len(seen) == 2 and seen[0] is x and not seen[1].requires_grad  # real, fake
    gan.g_step(D, opt_g, fake, y, spy)
    assert len(seen) == 3 and seen[2] is fake
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in G.net.parameters())


def test_no_diffaugment_trains_the_gan_as_before(sample, tmp_path, monkeypatch):
    """--diffaugment none: the generator equals that of steps that never augment (the GAN
    before DiffAugment), for the same seed."""
    root, _ = sample
    args = gan_args(root, tmp_path / "none", "--gan-epochs", "1", "--diffaugment", "none")
    rt = engine.init_runtime(args.device, args.amp, args.seed)
    _, train, _, _ = data.prepare_splits("bird", root, args.val_fraction)
    images, labels = gan.load_images(train, 32, 0), torch.tensor([r.label for r in train])
    torch.manual_seed(0)
    off = gan.train_gan(images, labels, 4, gan.GanConfig.from_flags(vars(args)), rt,
                         tmp_path / "none")
    d_step, g_step = gan.d_step, gan.g_step
    monkeypatch.setattr(gan, "d_step", lambda D, o, r, f, y, a, kind: d_step(D, o, r, f, y,
                                                                            loss_kind=kind))
    monkeypatch.setattr(gan, "g_step", lambda D, o, f, y, a, kind: g_step(D, o, f, y,
                                                                        loss_kind=kind))
    torch.manual_seed(0)
    before = gan.train_gan(images, labels, 4, gan.GanConfig.from_flags(vars(args)), rt,
                         tmp_path / "before")
    for a, b in zip(off.state_dict().values(), before.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    monkeypatch.undo()
    torch.manual_seed(0)
    on = gan.train_gan(images, labels, 4, gan_config(root, tmp_path / "on", "--gan-epochs",
                                                           "1"), rt, tmp_path / "on")
    assert not torch.equal(on.net[0].weight, off.net[0].weight)  # DiffAugment changes training


def gan_config(root, out, *extra):
    return gan.GanConfig.from_flags(vars(gan_args(root, out, *extra)))


def gan_args(root, out, *extra):
    return dcgan_train.parse_args([
        "--dataset", "bird", "--data-root", str(root), "--out", str(out), "--gan-size", "32",
        "--gan-epochs", "2", "--gan-batch-size", "8", "--z-dim", "16", "--gan-width", "8",
        "--synthetic-per-class", "3", "--model", "resnet18", "--weights", "none",
        "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--val-fraction", "0.25",
        "--device", "cpu", *extra])


def test_gan_test_size_below_the_gans_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        gan_args(tmp_path, tmp_path / "out", "--gan-test-size", "16")
    assert "--gan-test-size 16: expected at least --gan-size (32)" in capsys.readouterr().err


def test_gan_training_resumes_to_the_same_generator(sample, tmp_path):
    root, _ = sample
    args = gan_args(root, tmp_path / "whole")
    rt = engine.init_runtime(args.device, args.amp, args.seed)
    _, train, _, _ = data.prepare_splits("bird", root, args.val_fraction)
    images = gan.load_images(train, 32, 0)
    labels = torch.tensor([r.label for r in train])
    assert images.dtype == torch.uint8 and images.shape == (len(train), 3, 32, 32)
    torch.manual_seed(0)
    whole = gan.train_gan(images, labels, 4, gan.GanConfig.from_flags(vars(args)), rt,
                         tmp_path / "whole")

    torch.manual_seed(0)
    first = gan_args(root, tmp_path / "split", "--gan-epochs", "1")
    gan.train_gan(images, labels, 4, gan.GanConfig.from_flags(vars(first)), rt,
                         tmp_path / "split")
    torch.manual_seed(123)  # the resumed run restores the RNG from the checkpoint
    resumed = gan.train_gan(images, labels, 4, gan_config(root, tmp_path / "split",
                                                                "--resume"),
                                    rt, tmp_path / "split")
    for a, b in zip(whole.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)
    history = checkpoint.load(tmp_path / "split" / "last.pt")["values"]["history"]
    assert [h["epoch"] for h in history] == [1, 2]
    assert (tmp_path / "split" / "samples" / "epoch_002.png").is_file()
    assert list((tmp_path / "split" / "tb").glob("events.out.tfevents.*"))


def test_synthetic_images_reach_only_the_training_split(sample, tmp_path, monkeypatch):
    root, _ = sample
    seen = {}

    def capture(task, variant, flags, cfg, rt, classes, train, val, test, *, counts=None,
                **metrics):
        if variant != "dcgan":  # the GAN-test and GAN-train classifiers
            return {"metrics": {"test_top1": 0.0}}
        seen.update(train=train, val=val, test=test, counts=counts, metrics=metrics)

    monkeypatch.setattr(engine, "train_classifier", capture)
    dcgan_train.main(gan_args(root, tmp_path / "run", "--judge", str(tmp_path / "none.pt")))
    synthetic = [r for r in seen["train"] if r.key.startswith("synthetic/")]
    assert len(synthetic) == 4 * 3 and seen["counts"]["synthetic"] == 12
    assert sorted(r.label for r in synthetic) == sorted(list(range(4)) * 3)
    index = data.load_dataset("bird", root)
    real = {r.key for r in index.train + index.test}
    for split in ("val", "test"):
        assert seen[split] and all(r.key in real for r in seen[split])
    listed = (tmp_path / "run" / "synthetic" / "synthetic.txt").read_text().split("\n")
    assert len([line for line in listed if line]) == 12
    for r in synthetic:
        assert r.path.is_file()
        assert data.load_rgb(r.path).size == (32, 32)  # the classifier's --image-size
    assert seen["metrics"]["gen_class_acc"] is None  # no judge: not measured, and said so
    assert seen["metrics"]["fid"] > 0


def test_whole_pipeline_from_the_command_line(sample, tmp_path):
    root, written = sample
    classes = written["bird"]["classes"]
    judge, _ = models.build_model("resnet18", 4, "none")
    torch.save({"model": judge.state_dict(), "model_name": "resnet18", "classes": classes,
                "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, tmp_path / "judge.pt")
    out = tmp_path / "results" / "task4_dcgan" / "bird" / "dcgan"
    args = ["task4_dcgan/train.py", "--dataset", "bird", "--data-root", str(root),
            "--gan-epochs", "1", "--gan-batch-size", "8", "--z-dim", "16", "--gan-width", "8",
            "--synthetic-per-class", "2", "--model", "resnet18", "--weights", "none",
            "--image-size", "32", "--batch-size", "8", "--epochs", "1", "--gan-test-size", "48",
            "--judge", str(tmp_path / "judge.pt"), "--out", str(out)]
    gan_only = tmp_path / "gan-only"  # first: it is the FID gate's baseline
    result = run_cli(*args[:-1], str(gan_only), "--gan-only", "--diffaugment", "none")
    assert result.returncode == 0, result.stderr[-3000:]
    baseline = json.loads((gan_only / "metrics.json").read_text())
    result = run_cli(*args, "--fid-baseline", str(gan_only), "--fid-every", "1")
    assert result.returncode == 0, result.stderr[-3000:]
    record = json.loads((out / "metrics.json").read_text())
    (curve,) = json.loads((out / "gan" / "history.json").read_text())  # the one epoch
    assert curve["val_fid"] == record["metrics"]["val_fid"]  # the same generator, images
    assert curve["gan_test_top1"] == record["metrics"]["gan_test_top1"]  # and classifier
    assert curve["g_steps"] == record["data"]["real_train"] // 8
    # GAN-test and GAN-train at the GAN's size, and the gates: 4 classes cannot reach 10 x
    # chance; the FID gate compares with the run without DiffAugment
    metrics = record["metrics"]
    for key in ("gan_test_top1", "gan_test_real_val_top1", "gan_train_top1"):
        assert 0 <= metrics[key] <= 1
    gan_test, fid = record["gates"]
    assert gan_test["value"] == pytest.approx(4 * metrics["gan_test_top1"])
    assert gan_test["threshold"] == 10 and not gan_test["passed"]
    assert fid["value"] == metrics["val_fid"] > 0
    assert fid["threshold"] == baseline["metrics"]["val_fid"]
    assert fid["passed"] == (metrics["val_fid"] < baseline["metrics"]["val_fid"])
    gan_test_run, gan_train_run = (json.loads((out / role / "metrics.json").read_text())
                                   for role in ("gan_test", "gan_train"))
    # both classifiers see what the GAN sees (32 px), resized for the network (48 px)
    assert gan_test_run["args"]["image_size"] == gan_train_run["args"]["image_size"] == 48
    assert gan_test_run["data"]["train"] == record["data"]["real_train"]
    assert gan_test_run["data"]["test"] == gan_train_run["data"]["test"] == record["data"]["val"]
    for split in ("train", "val"):
        assert {data.load_rgb(p).size for p in (out / "gan_test_images" / split).glob("*.png")
                } == {(32, 32)}
    assert gan_train_run["data"]["train"] == baseline["data"]["generated"]  # generated only
    assert gan_train_run["metrics"]["test_top1"] == metrics["gan_train_top1"]
    assert record["task"] == "task4_dcgan" and record["variant"] == "dcgan"
    assert record["data"]["synthetic"] == 8 and record["data"]["train"] == \
        record["data"]["real_train"] + 8
    assert record["metrics"]["fid"] > 0 and 0 <= record["metrics"]["gen_class_acc"] <= 1
    assert (out / "gan" / "samples" / "epoch_001.png").is_file()
    assert (out / "gan" / "real_vs_generated.png").is_file()
    assert record["metrics"]["kid_std"] >= 0 and record["args"]["diffaugment"] == \
        "color,translation,cutout"
    assert_predictions_reproduce(out)  # the real test photos only
    record = baseline
    assert record["variant"] == "gan" and record["metrics"]["kid"] is not None
    assert [g["name"] for g in record["gates"]] == [gan_test["name"]]  # it is the baseline
    assert not (gan_only / "synthetic").exists() and not (gan_only / "best.pt").exists()
    assert (gan_only / "gan" / "real_vs_generated.png").is_file()
    # extended with --resume and more --gan-epochs: GAN-train learns from the new generator's
    # images, from scratch (not the earlier classifier, resumed at its last epoch)
    before = torch.load(gan_only / "gan_train" / "best.pt", weights_only=True)["model"]
    steps = json.loads((gan_only / "gan_train" / "generator.json").read_text())["g_steps"]
    result = run_cli(*args[:-1], str(gan_only), "--gan-only", "--diffaugment", "none",
                     "--gan-epochs", "2", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert "learnt from an earlier generator's images" in result.stdout
    assert json.loads((gan_only / "gan_train" / "generator.json").read_text()) == \
        {"g_steps": 2 * steps}
    after = torch.load(gan_only / "gan_train" / "best.pt", weights_only=True)["model"]
    assert any(not torch.equal(before[k], after[k]) for k in before)
    # a record carried over without its checkpoints (docs/results.md): GAN-test's classifier,
    # which scores the generated images, is trained again rather than read from nowhere
    for saved in (gan_only / "gan_test").glob("*.pt"):
        saved.unlink()
    result = run_cli(*args[:-1], str(gan_only), "--gan-only", "--diffaugment", "none",
                     "--gan-epochs", "2", "--resume")
    assert result.returncode == 0, result.stderr[-3000:]
    assert (gan_only / "gan_test" / "best.pt").is_file()
    # a judge trained on other classes is refused, by name
    torch.save({"model": judge.state_dict(), "model_name": "resnet18", "classes": ["a"] * 4,
                "image_size": 32, "mean": [0.5] * 3, "std": [0.5] * 3}, tmp_path / "other.pt")
    args[args.index(str(tmp_path / "judge.pt"))] = str(tmp_path / "other.pt")
    args[-1] = str(tmp_path / "other-run")
    result = run_cli(*args)
    assert result.returncode != 0 and "other.pt was trained on other classes" in result.stderr
