import os

import numpy as np
import pytest
import torch
from PIL import Image

from qhyvit_fx.data import DataError, Preprocess, load_rgb, open_folder, scan_folder

PRE = Preprocess(64, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


def _save(path, mode, size=(32, 32)):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if mode == "I;16":
        arr = (np.arange(size[0] * size[1]).reshape(size) * 60).astype(np.uint16)
        Image.fromarray(arr).save(path)
        return
    Image.new(mode, size, {"L": 128, "RGB": (10, 200, 30), "RGBA": (10, 200, 30, 128), "CMYK": (0, 50, 100, 0),
                           "P": 3}[mode]).save(path)


@pytest.mark.parametrize("mode,ext", [("L", "png"), ("RGBA", "png"), ("CMYK", "jpg"), ("P", "png"), ("I;16", "png"),
                                      ("RGB", "jpg")])
def test_any_mode_becomes_rgb(tmp_path, mode, ext):
    p = str(tmp_path / f"a.{ext}")
    _save(p, mode)
    img = load_rgb(p)
    assert img.mode == "RGB" and img.size == (32, 32)
    x = PRE.transform()(img)
    assert x.shape == (3, 64, 64) and torch.isfinite(x).all()


def test_tiny_image_is_resized(tmp_path):
    p = str(tmp_path / "t.png")
    _save(p, "RGB", size=(1, 1))
    assert PRE.transform()(load_rgb(p)).shape == (3, 64, 64)


def test_corrupt_and_truncated_files_are_named(tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"not an image at all")
    with pytest.raises(DataError, match="bad.jpg"):
        load_rgb(str(bad))
    good = tmp_path / "good.jpg"
    Image.new("RGB", (64, 64), (1, 2, 3)).save(good)
    trunc = tmp_path / "trunc.jpg"
    trunc.write_bytes(good.read_bytes()[:100])
    with pytest.raises(DataError, match="trunc.jpg"):
        load_rgb(str(trunc))


def test_skip_bad_images_counts_them(tmp_path):
    for i in range(3):
        _save(str(tmp_path / "c" / f"{i}.png"), "RGB")
    (tmp_path / "c" / "x.png").write_bytes(b"broken")
    with pytest.warns(UserWarning, match="skipped 1"):
        ds = open_folder(str(tmp_path), PRE, skip_bad=True)
    assert len(ds) == 3 and len(ds.skipped) == 1


def test_layouts(tmp_path):
    for c in ("cat", "dog"):
        for i in range(2):
            _save(str(tmp_path / "f" / c / f"{i}.png"), "RGB")
    samples, names, layout = scan_folder(str(tmp_path / "f"))
    assert layout == "imagefolder" and names == ["cat", "dog"] and [y for _, y in samples] == [0, 0, 1, 1]
    _save(str(tmp_path / "s" / "n01440764_tench.JPEG"), "RGB")
    _save(str(tmp_path / "s" / "n15075141_toilet_tissue.JPEG"), "RGB")
    samples, _, layout = scan_folder(str(tmp_path / "s"))
    assert layout == "imagenet-synset" and sorted(y for _, y in samples) == [0, 999]
    _save(str(tmp_path / "u" / "holiday.png"), "RGB")
    assert scan_folder(str(tmp_path / "u"))[2] == "unlabeled"


def test_missing_empty_and_unknown_classes(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        scan_folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        scan_folder(str(tmp_path / "empty"))
    (tmp_path / "txt").mkdir()
    (tmp_path / "txt" / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match="holds no images"):
        scan_folder(str(tmp_path / "txt"))
    _save(str(tmp_path / "k" / "zebra" / "0.png"), "RGB")
    with pytest.raises(DataError, match="zebra"):
        scan_folder(str(tmp_path / "k"), classes=["cat", "dog"])


def test_seeded_subset_and_fewer_than_asked(tmp_path):
    for i in range(10):
        _save(str(tmp_path / "c" / f"{i}.png"), "RGB")
    a = open_folder(str(tmp_path), PRE, limit=4, seed=3)
    b = open_folder(str(tmp_path), PRE, limit=4, seed=3)
    c = open_folder(str(tmp_path), PRE, limit=4, seed=4)
    assert a.samples == b.samples and a.samples != c.samples and len(a) == 4
    with pytest.raises(DataError, match="only 10"):
        open_folder(str(tmp_path), PRE, limit=32, exact=True)


def test_cifar_preprocessing_matches_the_training_recipe():
    # the checkpoints were trained on uint8 32 px images -> float / 255 -> bilinear 64 px -> normalize
    img = Image.fromarray((np.random.default_rng(0).integers(0, 256, (32, 32, 3))).astype(np.uint8))
    x = PRE.transform()(img)
    t = torch.from_numpy(np.asarray(img)).permute(2, 0, 1).float().div(255)[None]
    ref = torch.nn.functional.interpolate(t, size=(64, 64), mode="bilinear", align_corners=False)[0]
    ref = (ref - torch.tensor(PRE.mean)[:, None, None]) / torch.tensor(PRE.std)[:, None, None]
    assert (x - ref).abs().max() < 1e-6
