import json

import pytest
from conftest import run_cli
from PIL import Image

from shared.data import load_dataset
from shared.errors import DataError
from shared.resize import resize_dataset


@pytest.mark.parametrize("name", ["bird", "dog"])
def test_resized_copy_reads_as_the_same_dataset_with_scaled_boxes(sample, tmp_path, name):
    root, _ = sample
    folder = resize_dataset(name, root, tmp_path, short_side=40)
    original, copy = load_dataset(name, root), load_dataset(name, tmp_path)
    assert copy.folder == folder and copy.classes == original.classes
    for split in ("train", "test"):
        before, after = getattr(original, split), getattr(copy, split)
        assert [(r.key, r.label) for r in after] == [(r.key, r.label) for r in before]
        for old, new in zip(before, after, strict=True):
            with Image.open(old.path) as a, Image.open(new.path) as b:
                assert min(b.size) == 40 and b.size[0] / b.size[1] == pytest.approx(
                    a.size[0] / a.size[1], rel=0.03)
                sx, sy = b.width / a.width, b.height / a.height
            assert len(new.boxes) == len(old.boxes) > 0
            for (x0, y0, x1, y1), got in zip(old.boxes, new.boxes, strict=True):
                # VOC boxes are whole pixels: the Dogs' copy rounds
                assert got == pytest.approx((x0 * sx, y0 * sy, x1 * sx, y1 * sy), abs=0.51)
    info = json.loads((folder / "resized.json").read_text())
    assert info["short_side"] == 40 and info["shrunk"] == info["images"]


def test_rerun_keeps_finished_photos_and_redoes_wrong_ones(sample, tmp_path):
    root, _ = sample
    folder = resize_dataset("bird", root, tmp_path, short_side=40)
    photos = sorted((folder / "images").rglob("*.jpg"))
    stamps = {p: p.stat().st_mtime_ns for p in photos}
    Image.new("RGB", (10, 10)).save(photos[0])  # as if made with another --short-side
    (folder / "images.txt").unlink()  # as if killed before the metadata
    resize_dataset("bird", root, tmp_path, short_side=40)
    assert min(Image.open(photos[0]).size) == 40
    assert all(p.stat().st_mtime_ns == stamps[p] for p in photos[1:])
    assert load_dataset("bird", tmp_path).train


def test_small_photos_are_copied_unchanged(sample, tmp_path):
    root, _ = sample
    resize_dataset("dog", root, tmp_path, short_side=500)
    original, copy = load_dataset("dog", root), load_dataset("dog", tmp_path)
    assert all(a.path.read_bytes() == b.path.read_bytes()
               for a, b in zip(original.train, copy.train, strict=True))
    assert [r.boxes for r in copy.train] == [r.boxes for r in original.train]


def test_resize_refuses_to_overwrite_the_dataset(sample):
    root, _ = sample
    with pytest.raises(DataError, match="is the dataset itself"):
        resize_dataset("bird", root, root, short_side=40)


def test_resize_command(sample, tmp_path):
    root, _ = sample
    result = run_cli("-m", "shared.resize", "--dataset", "dog", "--data-root",
                     str(root), "--short-side", "32", "--out", str(tmp_path / "small"))
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["short_side"] == 32
    bad = run_cli("-m", "shared.resize", "--dataset", "dog", "--data-root",
                  str(tmp_path / "nothing"), "--short-side", "32", "--out", str(tmp_path / "x"))
    assert bad.returncode != 0 and "StanfordDogs" in bad.stderr
    assert "Traceback" not in bad.stderr
