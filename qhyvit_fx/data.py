"""Image data for calibration and evaluation.

Folder layouts:
* ImageFolder: ``DIR/<class>/*.jpg`` (torchvision ``ImageFolder``; classes sorted).
* ImageNet synset folder: ``DIR/<synset>_<anything>.JPEG`` (flat); the label is
  the synset's index among the sorted ImageNet synsets (timm ``ImageNetInfo``).
* Any other flat folder of images: unlabeled (label -1), for calibration.

Preprocessing comes from a checkpoint's ``meta`` (img_size, mean, std; the
CIFAR checkpoints were trained on 32 px images bilinearly upsampled) or from
the model's timm data config.  Grayscale, CMYK, RGBA, palette and 16-bit
images are converted to RGB.  An unreadable file raises :class:`DataError`
naming it (or is skipped and counted with ``skip_bad=True``).
"""
from __future__ import annotations

import os
import random
import re
import warnings
from dataclasses import dataclass
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

IMG_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")
_SYNSET = re.compile(r"^(n\d{8})[_.]")


class DataError(ValueError):
    """Calibration/evaluation data is missing or unusable; the message names the file and the fix."""


def load_rgb(path: str) -> Image.Image:
    """Open any image as 8-bit RGB (16-bit and float images are rescaled)."""
    try:
        with Image.open(path) as img:
            img.load()
            mode = img.mode
            if mode in ("I;16", "I;16B", "I;16L", "I"):
                arr = np.asarray(img, dtype=np.float64)
                arr = np.clip(arr / 257.0, 0, 255).astype(np.uint8)
                img = Image.fromarray(arr, mode="L")
            elif mode == "F":
                arr = np.asarray(img, dtype=np.float64)
                img = Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8), mode="L")
            elif mode in ("RGBA", "LA", "PA") or (mode == "P" and "transparency" in img.info):
                img = img.convert("RGBA")
                bg = Image.new("RGBA", img.size, (255, 255, 255, 255))
                img = Image.alpha_composite(bg, img)
            return img.convert("RGB")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as e:
        raise DataError(f"cannot read image '{path}' ({type(e).__name__}: {e}); remove or replace the file "
                        "(or pass --skip-bad-images to skip unreadable files)") from e


class ResizeTensor:
    """Bilinear resize of a CHW float tensor to (h, w), align_corners=False;
    antialiased only when shrinking (the CIFAR checkpoints were trained on
    32 px images upsampled this way)."""

    def __init__(self, size: int):
        self.size = (size, size)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) == self.size:
            return x
        shrink = x.shape[-2] > self.size[0] or x.shape[-1] > self.size[1]
        return F.interpolate(x[None], size=self.size, mode="bilinear", align_corners=False,
                             antialias=shrink)[0]


@dataclass
class Preprocess:
    img_size: int
    mean: Tuple[float, float, float]
    std: Tuple[float, float, float]
    fit: str = "resize"            # resize: straight to img_size; crop: shorter side + centre crop (timm eval)
    crop_pct: float = 0.875
    interpolation: str = "bicubic"

    def transform(self) -> Callable:
        from torchvision import transforms as T
        if self.fit == "resize":
            return T.Compose([T.PILToTensor(), T.ConvertImageDtype(torch.float32), ResizeTensor(self.img_size),
                              T.Normalize(self.mean, self.std)])
        from timm.data import create_transform
        return create_transform(input_size=(3, self.img_size, self.img_size), interpolation=self.interpolation,
                                mean=self.mean, std=self.std, crop_pct=self.crop_pct, is_training=False)

    @staticmethod
    def from_meta(meta: dict) -> Optional["Preprocess"]:
        if not meta or "img_size" not in meta:
            return None
        return Preprocess(int(meta["img_size"]), tuple(meta.get("mean", (0.485, 0.456, 0.406))),
                          tuple(meta.get("std", (0.229, 0.224, 0.225))), fit=meta.get("preprocess", "resize"),
                          crop_pct=float(meta.get("crop_pct", 0.875)),
                          interpolation=meta.get("interpolation", "bicubic"))

    @staticmethod
    def from_model(model: torch.nn.Module, img_size: Optional[int] = None) -> "Preprocess":
        from timm.data import resolve_data_config
        cfg = resolve_data_config({}, model=model)
        size = img_size or int(cfg["input_size"][-1])
        return Preprocess(size, tuple(cfg["mean"]), tuple(cfg["std"]), fit="crop",
                          crop_pct=float(cfg.get("crop_pct", 0.875)), interpolation=cfg.get("interpolation", "bicubic"))


def _is_image(name: str) -> bool:
    return name.lower().endswith(IMG_EXTENSIONS) and not name.startswith(".")


def scan_folder(root: str, classes: Optional[Sequence[str]] = None) -> Tuple[List[Tuple[str, int]], List[str], str]:
    """List (path, label) pairs; returns (samples, class names, layout)."""
    if not os.path.exists(root):
        raise DataError(f"data folder '{root}' does not exist; pass an existing folder of images")
    if not os.path.isdir(root):
        raise DataError(f"data path '{root}' is not a folder; pass a folder of images (ImageFolder layout "
                        "or a flat folder)")
    entries = sorted(os.listdir(root))
    subdirs = [e for e in entries if os.path.isdir(os.path.join(root, e)) and not e.startswith(".")]
    files = [e for e in entries if _is_image(e) and os.path.isfile(os.path.join(root, e))]
    if subdirs and not files:
        names = list(classes) if classes else subdirs
        unknown = [d for d in subdirs if d not in names]
        if classes and unknown:
            raise DataError(f"folder '{root}' has class folders {unknown[:5]} that the checkpoint does not know "
                            f"(its classes: {list(classes)[:10]}); use a folder with the checkpoint's classes")
        idx = {c: i for i, c in enumerate(names)}
        samples = []
        for d in subdirs:
            for dirpath, _, fnames in sorted(os.walk(os.path.join(root, d))):
                for f in sorted(fnames):
                    if _is_image(f):
                        samples.append((os.path.join(dirpath, f), idx[d]))
        layout = "imagefolder"
    else:
        from timm.data import ImageNetInfo
        synsets = {s: i for i, s in enumerate(ImageNetInfo().label_names())}
        labels = [_SYNSET.match(f) for f in files]
        if files and all(m is not None and m.group(1) in synsets for m in labels):
            samples = [(os.path.join(root, f), synsets[m.group(1)]) for f, m in zip(files, labels)]
            names, layout = list(ImageNetInfo().label_names()), "imagenet-synset"
        else:
            samples = [(os.path.join(root, f), -1) for f in files]
            names, layout = [], "unlabeled"
    if not samples:
        raise DataError(f"folder '{root}' holds no images ({', '.join(IMG_EXTENSIONS[:4])}, ...); "
                        "point to a folder with images, or <class>/ subfolders of images")
    return samples, names, layout


class ImageDataset(torch.utils.data.Dataset):
    def __init__(self, samples: Sequence[Tuple[str, int]], transform: Callable, skip_bad: bool = False):
        self.samples = list(samples)
        self.transform = transform
        self.skipped: List[str] = []
        if skip_bad:
            good = []
            for p, y in self.samples:
                try:
                    load_rgb(p)
                    good.append((p, y))
                except DataError:
                    self.skipped.append(p)
            if self.skipped:
                warnings.warn(f"skipped {len(self.skipped)} unreadable image(s), e.g. {self.skipped[0]}")
            if not good:
                raise DataError("no readable images left after skipping unreadable files")
            self.samples = good

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, i: int):
        path, y = self.samples[i]
        return self.transform(load_rgb(path)), y


def open_folder(root: str, pre: Preprocess, classes: Optional[Sequence[str]] = None, limit: Optional[int] = None,
                seed: int = 0, skip_bad: bool = False, exact: bool = False) -> ImageDataset:
    """Dataset over ``root``.  ``limit``: a seeded random subset of that many
    images (``exact``: fewer available is an error, as for calibration)."""
    samples, _, _ = scan_folder(root, classes)
    if limit is not None:
        if limit > len(samples):
            if exact:
                raise DataError(f"asked for {limit} images but '{root}' holds only {len(samples)}; "
                                f"pass a smaller count (e.g. --calib-images {len(samples)}) or add images")
        else:
            idx = sorted(random.Random(seed).sample(range(len(samples)), limit))
            samples = [samples[i] for i in idx]
    return ImageDataset(samples, pre.transform(), skip_bad=skip_bad)


def loader(ds: ImageDataset, batch_size: int = 64, workers: int = 0) -> torch.utils.data.DataLoader:
    return torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=workers)


def stack_images(ds: ImageDataset) -> torch.Tensor:
    return torch.stack([ds[i][0] for i in range(len(ds))])
