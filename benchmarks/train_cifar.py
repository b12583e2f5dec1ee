#!/usr/bin/env python3
"""Train a hybrid ViT on CIFAR-10 (ImageFolder JPEGs) on CPU: the recipe of the bundled checkpoint.

    python benchmarks/train_cifar.py mobilevit_xxs --data ../shared/data/cifar10 --out mvit.pth --epochs 4
    python benchmarks/train_cifar.py mobileformer_26m --data ../shared/data/cifar10 --out mf26.pth --epochs 3

Recipe (the one behind qhyvit_fx/assets/mobilevit_xxs-cifar10.pth, 4 epochs, test top-1 70.2 %):
32 px images, random crop with 4 px reflection padding and horizontal flips, bilinear upsampling to
--img (64), ImageNet mean/std; AdamW (lr 2e-3, weight decay 0.05), batch 96, label smoothing 0.1,
linear warm-up over min(1 epoch, 10 % of the steps) then cosine decay; seed 0; 2 threads.
The checkpoint is {"state_dict", "meta"} (model, kwargs, img_size, mean, std, classes, epochs,
test top-1), loadable with torch.load(weights_only=True) and by `qhyvit --weights`.  It is rewritten
atomically after every epoch, together with ``<out>.resume`` (optimizer, schedule and random-generator
state); ``--resume`` continues an interrupted run from its last finished epoch with the same result
as an uninterrupted one.

    python benchmarks/train_cifar.py efficientformer_l1_64 --data ../shared/data/cifar10 \
        --out benchmarks/weights/efficientformer_l1_64-cifar10.pth --epochs 20 --resume
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time

import numpy as np
import torch
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)


def load_uint8(folder: str):
    """All images of an ImageFolder as one uint8 tensor [N, 3, 32, 32] (labels, class names)."""
    from torchvision.datasets import ImageFolder
    ds = ImageFolder(folder)
    xs = np.stack([np.asarray(ds.loader(p).convert("RGB"), dtype=np.uint8) for p, _ in ds.samples])
    return torch.from_numpy(xs).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets), ds.classes


def batch_input(xb: torch.Tensor, img: int, augment: bool, gen: torch.Generator) -> torch.Tensor:
    x = xb.float() / 255.0
    if augment:
        x = F.pad(x, (4, 4, 4, 4), mode="reflect")
        i, j = torch.randint(0, 9, (2,), generator=gen).tolist()
        x = x[:, :, i:i + 32, j:j + 32]
        flip = torch.rand(x.shape[0], generator=gen) < 0.5
        x[flip] = x[flip].flip(3)
    x = F.interpolate(x, size=(img, img), mode="bilinear", align_corners=False)
    return (x - torch.tensor(MEAN).view(1, 3, 1, 1)) / torch.tensor(STD).view(1, 3, 1, 1)


@torch.no_grad()
def accuracy(model, x, y, img, bs=250) -> float:
    model.eval()
    hits = 0
    for k in range(0, len(x), bs):
        hits += int((model(batch_input(x[k:k + bs], img, False, None)).argmax(1) == y[k:k + bs]).sum())
    return 100.0 * hits / len(x)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("model")
    ap.add_argument("--data", required=True, help="folder with train/ and test/ ImageFolders")
    ap.add_argument("--out", required=True)
    ap.add_argument("--epochs", type=int, required=True)
    ap.add_argument("--img", type=int, default=64)
    ap.add_argument("--bs", type=int, default=96)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--wd", type=float, default=0.05)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--model-kwargs", default="{}", help='JSON, e.g. \'{"img_size": 64}\' for efficientformerv2')
    ap.add_argument("--resume", action="store_true", help="continue from <out>.resume if it exists")
    ap.add_argument("--stop-after", type=int, default=None,
                    help="leave after this many epochs of the schedule (continue later with --resume)")
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    from qhyvit_fx.models import create_model
    xtr, ytr, classes = load_uint8(os.path.join(a.data, "train"))
    xte, yte, _ = load_uint8(os.path.join(a.data, "test"))
    kw = json.loads(a.model_kwargs)
    model = create_model(a.model, num_classes=len(classes), **kw).model
    opt = torch.optim.AdamW(model.parameters(), lr=a.lr, weight_decay=a.wd)
    per_epoch = len(xtr) // a.bs
    total = per_epoch * a.epochs
    warm = min(per_epoch, total // 10)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: (s + 1) / warm if s < warm else 0.5 * (1 + math.cos(math.pi * (s - warm) / max(1, total - warm))))
    gen = torch.Generator().manual_seed(0)
    start = 0
    state_path = a.out + ".resume"
    if a.resume and os.path.exists(state_path):
        state = torch.load(state_path, map_location="cpu", weights_only=True)
        if state["epochs"] != a.epochs:
            sys.exit(f"{state_path} is for a {state['epochs']}-epoch schedule, not {a.epochs}; "
                     f"pass --epochs {state['epochs']} or start a new --out")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        gen.set_state(state["generator"])
        torch.set_rng_state(state["torch_rng"])
        start = state["epochs_done"]
        print(f"resumed from {state_path} after epoch {start}", flush=True)
    print(f"{a.model}: {len(xtr)} train / {len(xte)} test images, {per_epoch} steps x {a.epochs} epochs", flush=True)
    for ep in range(start, a.epochs):
        model.train()
        perm = torch.randperm(len(xtr), generator=gen)
        t0 = time.time()
        for k in range(per_epoch):
            idx = perm[k * a.bs:(k + 1) * a.bs]
            loss = F.cross_entropy(model(batch_input(xtr[idx], a.img, True, gen)), ytr[idx], label_smoothing=0.1)
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
            if k % 100 == 0:
                print(f"  epoch {ep + 1} step {k}/{per_epoch} loss {loss.item():.3f} ({time.time() - t0:.0f} s)",
                      flush=True)
        top1 = accuracy(model, xte, yte, a.img)
        print(f"epoch {ep + 1}/{a.epochs} test top-1 {top1:.2f} ({time.time() - t0:.0f} s)", flush=True)
        meta = dict(model=a.model, model_kwargs=kw, num_classes=len(classes), img_size=a.img, mean=list(MEAN),
                    std=list(STD), classes=classes, epochs_done=ep + 1, epochs=a.epochs, test_top1=top1,
                    recipe="benchmarks/train_cifar.py", data="CIFAR-10 train (50k), 32 px upsampled bilinear")
        tmp = a.out + ".tmp"
        torch.save({"state_dict": {k: v.detach().clone() for k, v in model.state_dict().items()}, "meta": meta}, tmp)
        os.replace(tmp, a.out)
        torch.save({"epochs": a.epochs, "epochs_done": ep + 1, "model": model.state_dict(), "optimizer": opt.state_dict(),
                    "scheduler": sched.state_dict(), "generator": gen.get_state(),
                    "torch_rng": torch.get_rng_state()}, tmp)
        os.replace(tmp, state_path)
        if a.stop_after is not None and ep + 1 >= a.stop_after:
            break


if __name__ == "__main__":
    main()
