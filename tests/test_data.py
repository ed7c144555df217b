import io
import json
import os
import shutil

import numpy as np
import pytest
import scipy.io
import torch
from conftest import run_cli
from PIL import Image

from shared.data import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    DataError,
    ImageDataset,
    Record,
    ShardSampler,
    build_transform,
    decode_need,
    default_workers,
    draft_factor,
    limit_per_split,
    load_dataset,
    load_rgb,
    make_loader,
    normalize,
    split_train_val,
)

# ------------------------------------------------------------------------------ readers


@pytest.mark.parametrize("name", ["bird", "dog"])
def test_reader_returns_exactly_what_was_generated(sample, name):
    root, written = sample
    index = load_dataset(name, root)
    expected = written[name]
    assert index.classes == expected["classes"]
    for split in ("train", "test"):
        want = [(im["key"], im["label"], im["boxes"]) for im in expected["images"]
                if im["train"] == (split == "train")]
        got = [(r.key, r.label, [tuple(b) for b in r.boxes]) for r in getattr(index, split)]
        assert got == want
    assert all(r.path.is_file() for r in index.train + index.test)
    assert {r.key for r in index.train}.isdisjoint(r.key for r in index.test)


def test_dogs_keep_every_dog_of_a_photo(sample):
    root, _ = sample
    index = load_dataset("dog", root)
    counts = {len(r.boxes) for r in index.train + index.test}
    assert counts == {1, 2}


def test_data_root_may_name_the_dataset_folder_itself(sample):
    root, _ = sample
    assert len(load_dataset("bird", root / "CUB_200_2011").train) == \
        len(load_dataset("bird", root).train)


def _copy(sample, tmp_path, name):
    root, _ = sample
    folder = {"bird": "CUB_200_2011", "dog": "StanfordDogs"}[name]
    shutil.copytree(root / folder, tmp_path / folder)
    return tmp_path / folder


def test_cub_class_ids_with_gaps_map_through_classes_txt(sample, tmp_path):
    folder = _copy(sample, tmp_path, "bird")
    dropped = "2"  # remove class 2 everywhere, as in the real 100-species subset
    ids = {line.split()[0] for line in (folder / "image_class_labels.txt").read_text().splitlines()
           if line.split()[1] == dropped}
    for file in ("images.txt", "image_class_labels.txt", "train_test_split.txt",
                 "bounding_boxes.txt"):
        lines = (folder / file).read_text().splitlines()
        (folder / file).write_text("\n".join(x for x in lines if x.split()[0] not in ids) + "\n")
    lines = (folder / "classes.txt").read_text().splitlines()
    (folder / "classes.txt").write_text("\n".join(x for x in lines if x.split()[0] != dropped))

    index = load_dataset("bird", tmp_path)
    assert index.classes == ["001.Crimson_Spotted", "003.Golden_Spotted", "004.Jade_Spotted"]
    for record in index.train + index.test:
        assert index.classes[record.label] == record.key.split("/")[0]


def test_cub_without_boxes_file_has_no_boxes(sample, tmp_path):
    folder = _copy(sample, tmp_path, "bird")
    (folder / "bounding_boxes.txt").unlink()
    index = load_dataset("bird", tmp_path)
    assert all(r.boxes == () for r in index.train + index.test)


# ------------------------------------------------------------------------------ images


def _saved(image: Image.Image, fmt: str, **kw) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, fmt, **kw)
    return buffer.getvalue()


def _palette_with_transparency() -> Image.Image:
    image = Image.new("P", (6, 4))
    image.putpalette([10, 20, 30] + [200, 100, 50] * 255)
    image.info["transparency"] = 0
    return image


@pytest.mark.parametrize("image, fmt, expected_pixel", [
    (Image.new("RGB", (6, 4), (30, 200, 90)), "JPEG", (30, 200, 90)),  # no conversion
    (Image.new("L", (6, 4), 77), "JPEG", (77, 77, 77)),
    (Image.new("CMYK", (6, 4), (0, 0, 0, 0)), "JPEG", (255, 255, 255)),
    (Image.new("RGB", (6, 4), (250, 10, 10)), "PNG", (250, 10, 10)),  # PNG bytes behind .jpg
    (Image.new("RGBA", (6, 4), (1, 2, 3, 0)), "PNG", (1, 2, 3)),
    (Image.new("LA", (6, 4), (90, 255)), "PNG", (90, 90, 90)),
    (_palette_with_transparency(), "PNG", (10, 20, 30)),
    (Image.new("1", (6, 4), 1), "PNG", (255, 255, 255)),
], ids=["rgb-jpeg", "gray-jpeg", "cmyk-jpeg", "png-as-jpg", "rgba", "la", "palette", "bilevel"])
def test_every_mode_loads_as_rgb(tmp_path, image, fmt, expected_pixel):
    path = tmp_path / "photo.jpg"
    path.write_bytes(_saved(image, fmt))
    loaded = load_rgb(path)
    assert loaded.mode == "RGB" and loaded.size == (6, 4)
    assert np.abs(np.asarray(loaded)[1, 1].astype(int) - expected_pixel).max() <= 2


def test_truncated_image_fails_naming_the_file(tmp_path):
    path = tmp_path / "cut.jpg"
    data = _saved(Image.effect_noise((64, 64), 50).convert("RGB"), "JPEG")
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="cut.jpg"):
        load_rgb(path)


def test_missing_image_at_load_names_the_file(tmp_path):
    with pytest.raises(DataError, match=r"gone\.jpg: image file is missing"):
        load_rgb(tmp_path / "gone.jpg")


@pytest.mark.parametrize("need, size, factor", [
    (("long", 128), (1024, 768), 8),  # letterbox 128: 1024 / 8 = 128 still fills it
    (("long", 128), (1000, 750), 4),  # 1000 / 8 = 125 would be upsampled
    (("short", 256), (1024, 768), 2),  # center crop 224 at ratio 0.875
    (("short", 256), (500, 375), 1),
    (("area", 224 / np.sqrt(0.5 * 0.75)), (1600, 1200), 2),  # crops keep >= 224 px
    (("long", 16), (4000, 3000), 8),  # libjpeg scales down at most 8x
])
def test_draft_factor_never_goes_below_the_need(need, size, factor):
    assert draft_factor(*size, need) == factor


def test_decode_need_matches_each_transform():
    assert decode_need(True, 512, "letterbox") == ("long", 512)
    assert decode_need(False, 224, "center-crop", crop_ratio=0.875) == ("short", 256)
    assert decode_need(False, 448, "random-resized-crop", crop_ratio=1.0) == ("short", 448)
    kind, side = decode_need(True, 224, "random-resized-crop", crop_scale=(0.25, 1.0))
    # the smallest crop of a square image that large: area 0.25, aspect 3/4 -> 224 px short
    assert kind == "area" and np.sqrt(0.25 * side ** 2 * 3 / 4) == pytest.approx(224)


def _halves_jpeg(path, size=(800, 600)):
    """Left half red, right half blue, a smooth ramp down each: easy to compare scaled."""
    ramp = np.linspace(0, 120, size[1])[:, None]
    pixels = np.zeros((size[1], size[0], 3))
    pixels[:, : size[0] // 2, 0] = 255 - ramp
    pixels[:, size[0] // 2:, 2] = 255 - ramp
    Image.fromarray(pixels.astype(np.uint8)).save(path, quality=95)


def test_jpeg_decodes_at_reduced_scale_close_to_the_full_decode(tmp_path):
    path = tmp_path / "big.jpg"
    _halves_jpeg(path)
    full = load_rgb(path)
    reduced = load_rgb(path, need=("long", 200))
    assert reduced.size == (200, 150)  # 800 / 4
    resized = np.asarray(full.resize(reduced.size, Image.Resampling.BOX), dtype=float)
    assert np.abs(np.asarray(reduced, dtype=float) - resized).mean() < 3
    png = tmp_path / "big.png"  # other formats decode in full
    full.save(png)
    assert load_rgb(png, need=("long", 200)).size == (800, 600)


def test_region_crops_the_same_place_after_a_reduced_decode(tmp_path):
    path = tmp_path / "big.jpg"
    _halves_jpeg(path)
    region = (400, 0, 800, 600)  # the blue half
    full = load_rgb(path, region)
    reduced = load_rgb(path, region, need=("long", 150))  # region long side 600 -> 1/4
    assert full.size == (400, 600) and reduced.size == (100, 150)
    pixels = np.asarray(reduced, dtype=float)
    assert pixels[:, 2:, 0].max() < 40 and pixels[:, :, 2].min() > 100  # no red crept in
    resized = np.asarray(full.resize(reduced.size, Image.Resampling.BOX), dtype=float)
    assert np.abs(pixels - resized)[:, 2:].mean() < 3
    # a region partly outside is clipped to the image, at either scale
    assert load_rgb(path, (600, -50, 900, 300), need=("long", 75)).size == (50, 75)
    # a box under a pixel wide or tall (an untrained detector's) keeps one pixel, even at
    # the image's edge: PIL would round both edges to the same column
    assert load_rgb(path, (71.7, 77.66, 72.0, 96.0)).size == (1, 18)
    assert load_rgb(path, (799.8, 10, 800, 10.2)).size == (1, 1)


def test_default_workers_share_the_cores_between_local_processes(monkeypatch):
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    assert default_workers() == 16
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "4")  # torchrun, one process a GPU
    assert default_workers() == 4
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "32")
    assert default_workers() == 1


# ------------------------------------------------------------------------------- split


def test_validation_split_is_stratified_seeded_and_from_train_only(sample):
    root, _ = sample
    index = load_dataset("bird", root)
    train, val = split_train_val(index.train, 0.4, seed=3)
    per_class_train = np.bincount([r.label for r in index.train])
    assert np.bincount([r.label for r in val]).tolist() == \
        [round(n * 0.4) for n in per_class_train]
    assert {r.key for r in train} | {r.key for r in val} == {r.key for r in index.train}
    assert {r.key for r in train}.isdisjoint(r.key for r in val)
    assert {r.key for r in val}.isdisjoint(r.key for r in index.test)
    assert split_train_val(index.train, 0.4, seed=3) == (train, val)
    assert split_train_val(index.train, 0.4, seed=4)[1] != val
    assert split_train_val(index.train, 0.0) == (index.train, [])


def test_validation_split_keeps_one_training_image_per_class(sample):
    root, _ = sample
    train, _ = split_train_val(load_dataset("dog", root).train, 0.99)
    assert sorted({r.label for r in train}) == [0, 1, 2, 3]


def test_limit_takes_a_seeded_sample_in_order(sample):
    root, _ = sample
    records = load_dataset("bird", root).test
    first = limit_per_split(records, 7, seed=1)
    assert len(first) == 7 and first == limit_per_split(records, 7, seed=1)
    assert first == [r for r in records if r in first]  # original order kept
    assert limit_per_split(records, 7, seed=2) != first
    assert limit_per_split(records, None) == records


# -------------------------------------------------------------------------- transforms


def test_eval_letterbox_is_deterministic_square_and_padded():
    wide = Image.new("RGB", (80, 40), (255, 255, 255))
    transform = build_transform(False, 32, "letterbox")
    out = transform(wide)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out, transform(wide))
    assert (out[:, 0, 16] == 0).all() and (out[:, 31, 16] == 0).all()  # black bars
    assert (out[:, 16, 16] == 255).all()


@pytest.mark.parametrize("size", [(80, 50), (45, 71)])
def test_letterbox_has_pillows_pad_geometry(size):
    """Task 6 maps boxes into the letterboxed frame with ImageOps.pad's arithmetic."""
    from PIL import ImageOps

    rng = np.random.default_rng(0)
    smooth = Image.fromarray(rng.integers(40, 255, (4, 4, 3), dtype=np.uint8)).resize(
        size, Image.Resampling.BICUBIC)
    ours = build_transform(False, 32, "letterbox")(smooth)
    pillow = torch.from_numpy(np.array(ImageOps.pad(smooth, (32, 32)))).permute(2, 0, 1)
    assert torch.equal(ours.sum(0) == 0, pillow.sum(0) == 0)  # the same black bars
    assert (ours.float() - pillow.float()).abs().mean() < 3


def test_pixels_normalised_on_the_device_match_the_normalising_transform():
    photo = Image.effect_noise((60, 40), 60).convert("RGB")
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    pixels = build_transform(False, 32, "letterbox")(photo)[None]
    expected = build_transform(False, 32, "letterbox", normalization=(mean, std))(photo)[None]
    assert torch.allclose(normalize(pixels, mean, std), expected, atol=1e-5)
    assert torch.allclose(normalize(pixels), build_transform(  # ImageNet's by default
        False, 32, "letterbox", normalization=(IMAGENET_MEAN, IMAGENET_STD))(photo)[None],
        atol=1e-5)
    channels_last = pixels.contiguous(memory_format=torch.channels_last)
    assert normalize(channels_last).is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("mode", ["random-resized-crop", "center-crop"])
def test_crop_modes_evaluate_with_a_center_crop(mode):
    image = Image.effect_noise((60, 40), 60).convert("RGB")
    out = build_transform(False, 32, mode)(image)
    assert out.shape == (3, 32, 32)
    assert torch.equal(out, build_transform(False, 32, mode)(image))


def test_training_transform_augments():
    image = Image.effect_noise((48, 48), 60).convert("RGB")
    transform = build_transform(True, 32, "random-resized-crop", grayscale=0.5)
    outs = {transform(image).sum().item() for _ in range(8)}
    assert len(outs) > 1


def test_grayscale_keeps_three_channels():
    colour = Image.effect_noise((40, 30), 60).convert("RGB")
    out = build_transform(True, 32, "letterbox", grayscale=1.0)(colour)
    assert out.shape == (3, 32, 32) and out.dtype == torch.uint8
    assert torch.equal(out[0], out[1]) and torch.equal(out[1], out[2])


# ----------------------------------------------------------------------------- loaders


def _epoch_batches(dataset, workers, epoch):
    loader = make_loader(dataset, 4, train=True, workers=workers, seed=7)
    loader.sampler.set_epoch(epoch)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_training_batches_depend_on_seed_and_epoch_not_on_workers(sample):
    root, _ = sample
    index = load_dataset("bird", root)
    dataset = ImageDataset(index.train, build_transform(True, 32, "random-resized-crop"))
    first = _epoch_batches(dataset, 0, epoch=0)
    assert len(first) == len(index.train) // 4  # the partial batch is dropped
    for (xa, ya), (xb, yb) in zip(first, _epoch_batches(dataset, 2, epoch=0), strict=True):
        assert torch.equal(ya, yb) and torch.equal(xa, xb)
    again = _epoch_batches(dataset, 0, epoch=1)
    assert not all(torch.equal(a[0], b[0]) for a, b in zip(first, again, strict=True))


def test_evaluation_shards_count_every_image_once():
    seen = [i for rank in range(3) for i in ShardSampler(10, rank, 3)]
    assert sorted(seen) == list(range(10))


def test_eval_loader_keeps_order_and_partial_batch(sample):
    root, _ = sample
    index = load_dataset("dog", root)
    loader = make_loader(ImageDataset(index.test, build_transform(False, 32)), 3, train=False)
    labels = torch.cat([y for _, y in loader]).tolist()
    assert labels == [r.label for r in index.test]


# --------------------------------------------------------------------------- bad input


def test_wrong_root_names_the_folder_and_expected_files(tmp_path):
    with pytest.raises(DataError) as error:
        load_dataset("bird", tmp_path)
    message = str(error.value)
    assert str(tmp_path / "CUB_200_2011") in message
    assert "images.txt" in message and "train_test_split.txt" in message
    with pytest.raises(DataError, match="train_list.mat"):
        load_dataset("dog", tmp_path)


@pytest.mark.parametrize("file, line", [
    ("images.txt", "7"),
    ("train_test_split.txt", "3 2"),
    ("image_class_labels.txt", "4 x"),
    ("bounding_boxes.txt", "5 1.0 2.0 3.0"),
])
def test_malformed_metadata_line_names_file_and_line(sample, tmp_path, file, line):
    folder = _copy(sample, tmp_path, "bird")
    lines = (folder / file).read_text().splitlines()
    lines[2] = line
    (folder / file).write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"{file}, line 3: expected"):
        load_dataset("bird", tmp_path)


def test_label_of_unknown_class_is_an_error(sample, tmp_path):
    folder = _copy(sample, tmp_path, "bird")
    lines = (folder / "image_class_labels.txt").read_text().splitlines()
    lines[0] = "1 99"
    (folder / "image_class_labels.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match="class 99"):
        load_dataset("bird", tmp_path)


@pytest.mark.parametrize("name", ["bird", "dog"])
def test_missing_listed_image_names_the_file(sample, tmp_path, name):
    folder = _copy(sample, tmp_path, name)
    victim = sorted(folder.rglob("*.jpg"))[5]
    victim.unlink()
    with pytest.raises(DataError, match=rf"{victim.name}: listed image file is missing"):
        load_dataset(name, tmp_path)


def test_missing_dog_annotation_names_the_file(sample, tmp_path):
    folder = _copy(sample, tmp_path, "dog")
    victim = sorted(p for p in (folder / "Annotation").rglob("*") if p.is_file())[0]
    victim.unlink()
    with pytest.raises(DataError, match=rf"{victim.name}: annotation file is missing"):
        load_dataset("dog", tmp_path)


def test_dog_labels_that_disagree_with_folders_are_an_error(sample, tmp_path):
    folder = _copy(sample, tmp_path, "dog")
    mat = scipy.io.loadmat(folder / "train_list.mat")
    mat["labels"][0, 0] = 3  # an image of breed 1 labelled as breed 3
    scipy.io.savemat(folder / "train_list.mat", {k: mat[k] for k in
                                                 ("file_list", "annotation_list", "labels")})
    with pytest.raises(DataError, match=r"train_list.mat: .* has label \d, other images of"):
        load_dataset("dog", tmp_path)


# -------------------------------------------------------------------------- command line


def test_summary_command_prints_counts(sample):
    root, written = sample
    result = run_cli("-m", "shared.data", "summary", "--dataset", "dog", "--data-root",
                     str(root), "--val-fraction", "0.2", "--verify")
    assert result.returncode == 0, result.stderr
    summary = json.loads(result.stdout)
    images = written["dog"]["images"]
    assert summary["classes"] == 4
    assert summary["train"] + summary["val"] == sum(im["train"] for im in images)
    assert summary["val"] == 4  # round(5 * 0.2) of each of the 4 breeds
    assert summary["test"] == sum(not im["train"] for im in images)
    assert summary["boxes"] == len(images)


def test_cli_errors_are_one_readable_line(sample, tmp_path):
    folder = _copy(sample, tmp_path, "bird")
    victim = sorted(folder.rglob("*.jpg"))[3]
    victim.write_bytes(victim.read_bytes()[:200])  # truncated: only --verify decodes it
    ok = run_cli("-m", "shared.data", "summary", "--dataset", "bird", "--data-root",
                 str(tmp_path))
    assert ok.returncode == 0, ok.stderr
    for args, named in ((["--data-root", str(tmp_path), "--verify"], victim.name),
                        (["--data-root", str(tmp_path / "nowhere")], "nowhere")):
        result = run_cli("-m", "shared.data", "summary", "--dataset", "bird", *args)
        assert result.returncode != 0
        assert result.stderr.startswith("error: ") and "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
        assert named in result.stderr


# ------------------------------------------------------------- input that must not pass


def test_sixteen_bit_png_scales_to_eight_bits(tmp_path):
    path = tmp_path / "deep.jpg"  # 16-bit PNG bytes behind a .jpg name
    values = np.array([[0, 257 * 40], [257 * 128, 65535]], dtype=np.uint16)
    Image.fromarray(values).save(path, "PNG")
    assert Image.open(path).mode == "I;16"
    loaded = np.asarray(load_rgb(path))
    assert loaded.shape == (2, 2, 3) and loaded[..., 0].tolist() == [[0, 40], [128, 255]]


def test_exif_orientation_is_ignored_so_boxes_keep_the_stored_frame(tmp_path):
    path = tmp_path / "rotated.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 clockwise to display"
    Image.new("RGB", (60, 20), (200, 30, 30)).save(path, exif=exif.tobytes())
    assert Image.open(path).getexif()[0x0112] == 6
    assert load_rgb(path).size == (60, 20)  # as stored, the frame of the dataset's boxes


def test_a_class_without_training_photos_is_named(sample, tmp_path):
    folder = _copy(sample, tmp_path, "bird")
    labels = dict(line.split() for line in (folder / "image_class_labels.txt").read_text()
                  .splitlines())
    split = (folder / "train_test_split.txt").read_text().splitlines()
    (folder / "train_test_split.txt").write_text("\n".join(
        f"{i} 0" if labels[i] == "3" else f"{i} {flag}"
        for i, flag in (line.split() for line in split)) + "\n")
    with pytest.raises(DataError, match=r"classes.txt: 1 class\(es\) have no training photos: "
                                        r"003\."):
        load_dataset("bird", tmp_path)


def test_a_photo_listed_twice_names_both_lines(sample, tmp_path):
    folder = _copy(sample, tmp_path, "bird")
    lines = (folder / "images.txt").read_text().splitlines()
    lines[4] = f"{lines[4].split()[0]} {lines[1].split()[1]}"
    (folder / "images.txt").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=r"images.txt, lines 2 and 5: .* is listed twice"):
        load_dataset("bird", tmp_path)


def test_a_small_class_still_gives_one_validation_photo(sample):
    root, _ = sample
    few = []
    index = load_dataset("bird", root)
    for label in range(4):
        few += [r for r in index.train if r.label == label][:4]
    train, val = split_train_val(few, 0.1)  # round(0.4) would be none
    assert np.bincount([r.label for r in val]).tolist() == [1, 1, 1, 1]
    assert len(train) == 12


def test_an_unreadable_photo_stops_the_run_before_training(sample, tmp_path):
    from task1_2_finetune import train as finetune

    folder = _copy(sample, tmp_path, "bird")
    index = load_dataset("bird", tmp_path)
    broken = index.test[-1].path  # found today only when the test split is evaluated
    broken.write_bytes(b"not a photo")
    args = finetune.parse_args(["--data-root", str(tmp_path), "--model", "resnet18",
                                "--variant", "baseline", "--out", str(tmp_path / "run")])
    with pytest.raises(DataError, match=f"{broken}: cannot read the image"):
        finetune.main(args)
    assert not (tmp_path / "run" / "last.pt").exists() and folder.is_dir()


def test_a_decompression_bomb_is_named_before_training(sample, tmp_path, monkeypatch):
    from shared.data import check_images

    records = load_dataset("bird", sample[0]).train
    largest = max(np.prod(Image.open(r.path).size) for r in records)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(largest) - 1)
    with pytest.raises(DataError, match="decompression-bomb limit"):
        check_images(records)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", int(largest))
    check_images(records)


def test_a_photo_cut_off_after_its_header_is_named_before_training(sample, tmp_path,
                                                                   monkeypatch):
    from shared import data

    folder = _copy(sample, tmp_path, "bird")
    records = load_dataset("bird", tmp_path).train
    cache = tmp_path / "cache" / "verified.json"
    data.check_images(records, cache)  # every photo whole: remembered
    opened = []
    real_open = Image.open
    monkeypatch.setattr(Image, "open", lambda path, *a: opened.append(path) or
                        real_open(path, *a))
    data.check_images(records, cache)
    assert opened == []  # a repeat run decodes nothing
    victim = records[5].path
    whole = victim.read_bytes()
    victim.write_bytes(whole[: len(whole) * 3 // 4])  # the header intact, the body cut
    with Image.open(victim) as image:
        assert image.size  # opening (the header) still works: only decoding finds it
    with pytest.raises(DataError, match=f"{victim}: cannot read the image .*truncated"):
        data.check_images(records, cache)
    assert opened[-1] == victim and len(opened) == 2  # only the changed photo again
    assert folder.is_dir()


def test_the_verified_cache_lives_outside_the_data(tmp_path, monkeypatch):
    from shared import data

    monkeypatch.setenv("FGVC_CACHE", str(tmp_path / "c"))
    first, second = data.verified_cache(tmp_path / "a"), data.verified_cache(tmp_path / "b")
    assert first.parent == tmp_path / "c" and first != second


# ------------------------------------------------------------------------ decoded cache


def _photos(tmp_path, count=4):
    """JPEGs of different sizes (one big enough for draft-mode decodes) and a PNG."""
    rng = np.random.default_rng(0)
    paths = []
    for i, size in enumerate([(120, 90), (800, 600), (64, 200), (300, 300)][:count]):
        path = tmp_path / f"p{i}.jpg"
        Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)
        paths.append(path)
    png = tmp_path / "p.png"
    Image.fromarray(rng.integers(0, 256, (50, 70), dtype=np.uint8)).save(png)  # grayscale
    return [*paths, png]


@pytest.mark.parametrize("train, size, mode", [(True, 64, "random-resized-crop"),
                                                (False, 96, "letterbox"),
                                                (False, 48, "center-crop")])
def test_the_decoded_cache_gives_exactly_the_pixels_of_a_plain_decode(tmp_path, monkeypatch,
                                                                      train, size, mode):
    monkeypatch.setenv("FGVC_CACHE", str(tmp_path / "cache"))
    paths = _photos(tmp_path)
    records = [Record(path=p, label=i, key=p.name) for i, p in enumerate(paths)]
    records += [Record(path=p, label=0, key=f"crop{i}", crop=(10, 20, 500, 400))
                for i, p in enumerate(paths)]  # clipped to small photos; drafted on the big one
    transform, need = build_transform(train, size, mode), decode_need(train, size, mode)
    cached = ImageDataset(records, transform, need, whole_share=0.5, decoded_cache=True)
    plain = ImageDataset(records, transform, need, whole_share=0.5, decoded_cache=False)
    assert cached.decoded is not None and plain.decoded is None
    for i in range(len(records)):
        seeded = (i, 1000 + i)  # augmented from this seed, and maybe the whole photo
        assert torch.equal(cached[seeded][0], plain[seeded][0])
        torch.manual_seed(i)
        unseeded = cached[i][0]
        torch.manual_seed(i)
        assert torch.equal(unseeded, plain[i][0])
    # a second dataset decodes nothing: the store already holds every photo it needs
    store = tmp_path / "cache" / "decoded"
    before = {p.name: p.stat().st_size for p in store.glob("pixels-*")}
    ImageDataset(records, transform, need, whole_share=0.5, decoded_cache=True)
    assert {p.name: p.stat().st_size for p in store.glob("pixels-*")} == before


def test_the_decoded_cache_decodes_a_photo_again_when_it_changes(tmp_path, monkeypatch):
    monkeypatch.setenv("FGVC_CACHE", str(tmp_path / "cache"))
    path = tmp_path / "a.jpg"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(path)
    records = [Record(path=path, label=0, key="a")]
    transform = build_transform(False, 32)
    first = ImageDataset(records, transform, decoded_cache=True)[0][0]
    Image.new("RGB", (40, 30), (10, 10, 200)).save(path)  # same size in bytes, new mtime
    os.utime(path, ns=(1, 1))
    second = ImageDataset(records, transform, decoded_cache=True)[0][0]
    assert torch.equal(second, ImageDataset(records, transform, decoded_cache=False)[0][0])
    assert not torch.equal(first, second)
    Image.new("RGB", (60, 20), (10, 200, 10)).save(path)  # another size: another shape
    third = ImageDataset(records, transform, decoded_cache=True)
    assert torch.equal(third[0][0], ImageDataset(records, transform, decoded_cache=False)[0][0])
    assert list(third.decoded.index[str(path)]["size"]) == [60, 20]


def test_a_damaged_cache_index_is_rebuilt_not_trusted(tmp_path, monkeypatch):
    monkeypatch.setenv("FGVC_CACHE", str(tmp_path / "cache"))
    records = [Record(path=p, label=0, key=p.name) for p in _photos(tmp_path)]
    transform = build_transform(False, 32)
    ImageDataset(records, transform, decoded_cache=True)
    (tmp_path / "cache" / "decoded" / "index.json").write_text("{not json")
    rebuilt = ImageDataset(records, transform, decoded_cache=True)
    plain = ImageDataset(records, transform, decoded_cache=False)
    assert all(torch.equal(rebuilt[i][0], plain[i][0]) for i in range(len(records)))


def test_fgvc_decoded_cache_off_decodes_every_time(tmp_path, monkeypatch):
    monkeypatch.setenv("FGVC_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("FGVC_DECODED_CACHE", "off")
    records = [Record(path=p, label=0, key=p.name) for p in _photos(tmp_path, 1)]
    assert ImageDataset(records, build_transform(False, 32)).decoded is None
    assert not (tmp_path / "cache" / "decoded").exists()


def test_a_cache_that_cannot_be_written_falls_back_to_decoding(tmp_path, monkeypatch, capsys):
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("")
    monkeypatch.setenv("FGVC_CACHE", str(blocker))  # $FGVC_CACHE/decoded cannot be made
    records = [Record(path=p, label=0, key=p.name) for p in _photos(tmp_path, 1)]
    dataset = ImageDataset(records, build_transform(False, 32))
    assert dataset.decoded is None and "no decoded cache" in capsys.readouterr().err
    assert torch.equal(dataset[0][0], build_transform(False, 32)(load_rgb(records[0].path)))
