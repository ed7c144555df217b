"""Training images/s: a faithful copy of the seed's step (fp32, contiguous) against the
engine's own training loop (`shared.engine.train_epoch`) at its default AMP and memory
format for this machine, side by side in one run, on the seed's input (512 x 512 letterbox
tensors).

    python bench/train_speed.py --models resnet18 resnext101_32x8d --batch-sizes 16 4
    python bench/train_speed.py --models resnet18 --batch-sizes 16 --image-size 224 --bf16
    python bench/train_speed.py --models resnext101_32x8d --batch-sizes 4 --layouts
    python bench/train_speed.py --models resnext101_32x8d --batch-sizes 32 --image-size 448 \
        --steps 10 --compile --peak-tflops 989   # on an H100: adds model FLOP utilisation

The seed's column trains on float images already on the device; the engine's loop gets
what its loaders give, uint8 pixels in host memory (pinned on CUDA), and does everything it
does in a real run: the copy, normalisation, memory format, autocast, the finiteness check,
the fused optimiser on CUDA, the schedule and the epoch's sums.
"""

import argparse
import contextlib
import io
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch
from torch import nn

from shared import engine
from shared.engine import count_gflops, cpu_has_amx, peak_memory_mb, resolve_amp
from shared.models import PackedSelfAttention, build_model


def torchvision_attention(model):
    """Undo build_model's batch-first ViT attention: nn.MultiheadAttention as torchvision
    builds it (the seed's, and this toolkit's before the speed issue)."""
    for module in model.modules():
        if isinstance(module, PackedSelfAttention):
            module.__class__ = nn.MultiheadAttention


def seed_steps(model_name, batch, size, device):
    """run(count): `count` training steps as the seed wrote them (SGD momentum 0.9, fp32,
    contiguous) of a fresh model on fixed data, warmed up."""
    torch.manual_seed(0)
    model, _ = build_model(model_name, 200, weights="none", image_size=size)
    torchvision_attention(model)
    model.to(device).train()
    images = torch.randn(batch, 3, size, size, device=device)
    labels = torch.randint(0, 200, (batch,), device=device)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)

    def run(count):
        for _ in range(count):
            loss = nn.functional.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

    run(1)  # warm-up: allocator, oneDNN / cuDNN kernel choice
    return run


def engine_steps(model_name, batch, size, amp_dtype, device, compile=False, packed=True,
                 channels_last=None):
    """run(count): the engine's training loop over `count` batches of a fresh model (SGD
    momentum 0.9, the engine's memory format for the model unless `channels_last` says),
    warmed up. `packed=False`: a ViT with torchvision's own attention."""
    torch.manual_seed(0)
    model, spec = build_model(model_name, 200, weights="none", image_size=size)
    if not packed:
        torchvision_attention(model)
    model.to(device).train()
    if channels_last is None:
        channels_last = spec.is_cnn  # the engine's default: for convolutions only
    if channels_last:
        model.to(memory_format=torch.channels_last)
    rt = engine.Runtime(device, amp_dtype=amp_dtype)
    optimizer = engine.make_optimizer(model.parameters(), device, "sgd", 0.01, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    pixels = torch.randint(0, 256, (batch, 3, size, size), dtype=torch.uint8)
    labels = torch.randint(0, 200, (batch,))
    if device.type == "cuda":  # as the engine's loaders on CUDA
        pixels, labels = pixels.pin_memory(), labels.pin_memory()
    net = torch.compile(model) if compile else model
    loop = engine.Loop(model, spec, optimizer, scheduler, scaler, nn.CrossEntropyLoss(), rt,
                       channels_last, clip_grad=0.0, epochs=1, last_path=Path("last.pt"))

    def run(count):
        with contextlib.redirect_stdout(io.StringIO()):  # its progress line, past 30 s
            engine.train_epoch(loop, net, [(pixels, labels)] * count, 0)

    run(1)  # warm-up: allocator, oneDNN / cuDNN kernel choice, compilation
    return run


def best_images_per_s(runs: dict, batch: int, count: int, rounds: int, device) -> dict:
    """images/s of each column's `run(count)`, best of `rounds` rounds that take turns, so a
    slow spell of a shared machine hits one round of every column, not one column."""
    best = dict.fromkeys(runs, 0.0)
    for _ in range(rounds):
        for name, run in runs.items():
            if device.type == "cuda":
                torch.cuda.synchronize()
            start = time.perf_counter()
            run(count)
            if device.type == "cuda":
                torch.cuda.synchronize()
            best[name] = max(best[name], batch * count / (time.perf_counter() - start))
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=["resnet18", "resnext101_32x8d"])
    parser.add_argument("--batch-sizes", nargs="+", type=int, default=[16, 4])
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--steps", type=int, default=2, help="timed steps a round")
    parser.add_argument("--rounds", type=int, default=3,
                        help="rounds, each timing every column in turn; the best counts")
    precision = parser.add_mutually_exclusive_group()
    precision.add_argument("--bf16", action="store_true",
                           help="add a column: bf16 autocast + channels_last")
    precision.add_argument("--layouts", action="store_true",
                           help="add columns: the engine's loop in fp32 and in bf16 autocast, "
                                "each contiguous and channels_last (what each default buys)")
    parser.add_argument("--compile", action="store_true",
                        help="add a column: the engine default under torch.compile")
    parser.add_argument("--torchvision-attention", action="store_true",
                        help="add columns (ViTs): the engine default, and with --compile the "
                             "compiled one, with torchvision's nn.MultiheadAttention instead of "
                             "the batch-first attention build_model gives ViTs")
    parser.add_argument("--peak-tflops", type=float,
                        help="the device's peak (e.g. 989 for an H100's dense bf16): adds the "
                             "engine default's model FLOP utilisation, 3 x forward FLOPs an "
                             "image (forward + backward) x images/s / peak")
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.backends.cudnn.benchmark = True  # as the engine on CUDA; the seed's column too
    default_amp = resolve_amp("auto", device)
    print(f"device {device}, {torch.get_num_threads()} threads, AMX: {cpu_has_amx()}, "
          f"engine default: amp={default_amp}, channels_last for CNNs\n")
    tv_attention = args.torchvision_attention
    layouts = [(amp, channels_last) for amp in (None, torch.bfloat16)
               for channels_last in (False, True)] if args.layouts else []
    extra = [f"{'bf16' if amp else 'fp32'} + {'channels_last' if last else 'contiguous'} (img/s)"
             for amp, last in layouts]
    extra += [name for name, wanted in (("bf16 + channels_last (img/s)", args.bf16),
                                       ("engine default + compile (img/s)", args.compile),
                                       ("torchvision attention (img/s)", tv_attention),
                                       ("torchvision attention + compile (img/s)",
                                        tv_attention and args.compile),
                                       ("engine default MFU", args.peak_tflops),
                                       ("MFU with compile", args.peak_tflops and args.compile))
             if wanted]
    print("| model | batch | seed: fp32, contiguous (img/s) | engine default (img/s) | ratio |"
          + "".join(f" {name} |" for name in extra))
    print("|---|---|---|---|---|" + "---|" * len(extra))
    for name, batch in zip(args.models, args.batch_sizes, strict=True):
        setup = (name, batch, args.image_size)
        runs = {"seed": seed_steps(*setup, device),
                "ours": engine_steps(*setup, default_amp, device)}
        for amp, channels_last in layouts:
            runs[amp, channels_last] = engine_steps(*setup, amp, device,
                                                    channels_last=channels_last)
        if args.bf16:
            runs["bf16"] = engine_steps(*setup, torch.bfloat16, device)
        if args.compile:
            runs["compiled"] = engine_steps(*setup, default_amp, device, compile=True)
        vit = tv_attention and name.startswith("vit")  # CNNs have no attention to swap
        for compile in (False, True)[:1 + args.compile] if vit else ():
            runs[f"tv{compile:d}"] = engine_steps(*setup, default_amp, device, compile, False)
        speed = best_images_per_s(runs, batch, args.steps, args.rounds, device)
        row = (f"| {name} | {batch} | {speed['seed']:.3f} | {speed['ours']:.3f} | "
               f"{speed['ours'] / speed['seed']:.2f}x |")
        row += "".join(f" {speed[layout]:.3f} |" for layout in layouts)
        if args.bf16:
            row += f" {speed['bf16']:.3f} |"
        if args.compile:
            row += f" {speed['compiled']:.3f} ({speed['compiled'] / speed['ours']:.2f}x) |"
        for compile, ours in ((0, "ours"), (1, "compiled"))[:1 + args.compile]:
            if vit:  # ours against torchvision's attention, compiled against compiled
                row += (f" {speed[f'tv{compile}']:.3f} (ours "
                        f"{speed[ours] / speed[f'tv{compile}']:.2f}x) |")
            elif tv_attention:
                row += " |"
        if args.peak_tflops:
            model, _ = build_model(name, 200, weights="none", image_size=args.image_size)
            flops = 2 * count_gflops(model.to(device), args.image_size, device) * 1e9
            for key in ("ours", "compiled") if args.compile else ("ours",):
                row += f" {3 * flops * speed[key] / (args.peak_tflops * 1e12):.1%} |"
        print(row, flush=True)
        del runs
    print(f"\npeak memory of the process: {peak_memory_mb(device):.0f} MB")


if __name__ == "__main__":
    main()
