import os
import subprocess
import sys

import numpy as np
import torch
from PIL import Image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _folder(root, n_per_class, seed):
    rng = np.random.default_rng(seed)
    for c in ("a", "b"):
        os.makedirs(os.path.join(root, c))
        for i in range(n_per_class):
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(os.path.join(root, c, f"{i}.png"))


def _train(data, out, *extra):
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "train_cifar.py"), "mobilevit_xxs", "--data", data,
           "--out", out, "--epochs", "2", "--img", "32", "--bs", "8", "--threads", "1", *extra]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)


def test_resumed_training_equals_uninterrupted(tmp_path):
    data = tmp_path / "data"
    _folder(str(data / "train"), 8, 0)
    _folder(str(data / "test"), 4, 1)
    full, part = str(tmp_path / "full.pth"), str(tmp_path / "part.pth")
    assert _train(str(data), full).returncode == 0
    first = _train(str(data), part, "--stop-after", "1")
    assert first.returncode == 0, first.stderr
    assert torch.load(part, weights_only=True)["meta"]["epochs_done"] == 1
    second = _train(str(data), part, "--resume")
    assert second.returncode == 0 and "resumed from" in second.stdout, second.stderr
    a = torch.load(full, weights_only=True)
    b = torch.load(part, weights_only=True)
    assert a["meta"]["test_top1"] == b["meta"]["test_top1"] and b["meta"]["epochs_done"] == 2
    for k, v in a["state_dict"].items():
        assert torch.equal(v, b["state_dict"][k]), k
