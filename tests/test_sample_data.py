import numpy as np
from conftest import run_cli
from PIL import Image

from shared.data import load_dataset


def _tree(root):
    return {p.relative_to(root): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_other_images(tmp_path):
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        result = run_cli("-m", "shared.sample_data", "--out", str(tmp_path / name),
                         "--classes", "3", "--per-class", "4", "--size", "48", "--seed", str(seed))
        assert result.returncode == 0, result.stderr
    a, b, c = (_tree(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys() and a != c


def test_objects_fill_part_of_the_frame_and_some_photos_are_gray(tmp_path):
    from shared.sample_data import write_sample_data

    write_sample_data(tmp_path, classes=6, per_class=10, size=64, seed=0)
    for name in ("bird", "dog"):
        index = load_dataset(name, tmp_path)
        records = index.train + index.test
        modes = []
        for record in records:
            with Image.open(record.path) as image:
                width, height = image.size
                modes.append(image.mode)
            for x0, y0, x1, y1 in record.boxes:
                assert 0 <= x0 < x1 <= width and 0 <= y0 < y1 <= height
                assert (x1 - x0) * (y1 - y0) < 0.5 * width * height
        assert 0 < modes.count("L") < len(records) / 4
        # the box's place varies: objects are not always centred
        centres = np.array([((b[0] + b[2]) / 2, (b[1] + b[3]) / 2) for r in records
                            for b in r.boxes])
        assert centres.std(axis=0).min() > 5
