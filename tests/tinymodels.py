"""Small hybrid models for fast tests (random weights: parity and unit tests only)."""
import timm
import torch
import torch.nn as nn
from timm.models.mobilevit import MobileVitBlock


class TinyHybrid(nn.Module):
    """conv stem -> MobileNet-style block -> MobileViT block (a real bridge) -> head."""

    def __init__(self, num_classes: int = 10, width: int = 16, dim: int = 24):
        super().__init__()
        timm.layers.set_fused_attn(False)
        self.stem = nn.Sequential(nn.Conv2d(3, width, 3, 2, 1, bias=False), nn.BatchNorm2d(width), nn.SiLU())
        self.dw = nn.Sequential(nn.Conv2d(width, width, 3, 1, 1, groups=width, bias=False), nn.BatchNorm2d(width),
                                nn.SiLU(), nn.Conv2d(width, width, 1, bias=False), nn.BatchNorm2d(width))
        self.vit = MobileVitBlock(width, width, transformer_dim=dim, transformer_depth=1, patch_size=2, num_heads=2)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        x = self.stem(x)
        x = x + self.dw(x)
        x = self.vit(x)
        return self.head(self.pool(x).flatten(1))


def tiny_hybrid(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    m = TinyHybrid()
    # non-trivial BN statistics so folding is exercised
    for mod in m.modules():
        if isinstance(mod, nn.BatchNorm2d):
            mod.running_mean.uniform_(-0.5, 0.5)
            mod.running_var.uniform_(0.5, 2.0)
            mod.weight.data.uniform_(0.5, 1.5)
            mod.bias.data.uniform_(-0.2, 0.2)
    return m.eval()
