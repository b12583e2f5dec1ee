"""Mobile-Former (Chen et al., "Mobile-Former: Bridging MobileNet and Transformer", CVPR 2022).

A Mobile (MobileNet-style inverted bottlenecks with dynamic ReLU) and a Former (a few global
tokens with attention) run in parallel, linked by a two-way bridge in every block:

* Mobile -> Former (``local_global``): tokens attend to the feature map (keys = values = the
  features themselves), then a projection into the token space;
* Former (``global_block``): token self-attention, channel MLP and an FFN;
* Former -> Mobile (``global_local``): every pixel attends to the tokens and adds the result.

The dynamic ReLU of the Mobile side, max(a1 x, a2 x), takes its coefficients from the first
token through a small MLP (``hyper``).  Module names follow the authors' release, so the bridge
operators of Q-HyViT's Table 4 (``features.1.local_global.proj -> features.1.global_block.ffn.0``,
``features.1.global_local.proj -> features.2.conv1.0``) exist under these names.

Seven sizes are registered with timm (``timm.create_model("mobileformer_26m")`` ... ``_508m``) once
``qhyvit_fx`` is imported.  Blocks take and return a ``(features, tokens)`` pair; tokens are laid
out T x B x C.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import torch
import torch.nn as nn
from timm.layers import DropPath
from timm.models import register_model

__all__ = ["MobileFormer", "MOBILEFORMER_CONFIGS", "PAPER_PARAMS_M", "PAPER_FLOPS_M"]

# paper Table (ImageNet, 224 px): parameters (M) and FLOPs (M multiply-adds)
PAPER_PARAMS_M = {"26m": 3.2, "52m": 3.5, "96m": 4.6, "151m": 7.6, "214m": 9.4, "294m": 11.4, "508m": 14.0}
PAPER_FLOPS_M = {"26m": 26, "52m": 52, "96m": 96, "151m": 151, "214m": 214, "294m": 294, "508m": 508}


def _divisible(v: float, divisor: int) -> int:
    out = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return out + divisor if out < 0.9 * v else out


class HSigmoid(nn.Module):
    def __init__(self):
        super().__init__()
        self.relu = nn.ReLU6()

    def forward(self, x):
        return self.relu(x + 3) / 6


class HSwish(nn.Module):
    def __init__(self):
        super().__init__()
        self.sigmoid = HSigmoid()

    def forward(self, x):
        return x * self.sigmoid(x)


class ChannelShuffle(nn.Module):
    def __init__(self, groups: int):
        super().__init__()
        self.groups = groups

    def forward(self, x):
        b, c, h, w = x.shape
        return x.reshape(b, self.groups, c // self.groups, h, w).transpose(1, 2).reshape(b, c, h, w)


def _bn_conv(inp, oup, k=1, stride=1, groups=1, shuffle=0) -> nn.Sequential:
    layers: List[nn.Module] = [nn.Conv2d(inp, oup, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(oup)]
    if shuffle > 1:
        layers.append(ChannelShuffle(shuffle))
    return nn.Sequential(*layers)


class Hyper(nn.Module):
    """Dynamic-ReLU coefficients for ``channels`` channels from token 0 (squeeze 4x, h-sigmoid)."""

    def __init__(self, token_dim: int, channels: int):
        super().__init__()
        self.hyper = nn.Sequential(nn.Linear(token_dim, token_dim // 4), nn.ReLU(), nn.Linear(token_dim // 4, 2 * channels),
                                   HSigmoid())

    def forward(self, tokens):
        return self.hyper(tokens[0])[:, :, None, None]


def dyrelu(x, coeff):
    """max(a1 x, a2 x), a1 in [0, 2], a2 in [-1, 1] (dynamic ReLU, scale 2)."""
    a1, a2 = torch.split(coeff, [x.shape[1], x.shape[1]], dim=1)
    return torch.max(x * ((a1 - 0.5) * 2.0 + 1.0), x * ((a2 - 0.5) * 2.0))


class Mobile2Former(nn.Module):
    """Tokens attend to the feature map (k = v = features, 2 heads), dynamic scaling, projection."""

    def __init__(self, channels: int, token_dim: int, heads: int = 2, drop_path: float = 0.0):
        super().__init__()
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.alpha = nn.Sequential(nn.Linear(token_dim, channels), HSigmoid())
        self.q = nn.Linear(token_dim, channels)
        self.proj = nn.Linear(channels, token_dim)
        self.layer_norm = nn.LayerNorm(token_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, features, tokens):
        b, c, h, w = features.shape
        t = tokens.shape[0]
        q = self.q(tokens).reshape(t, b, self.heads, -1).permute(1, 2, 0, 3)      # B x N x T x C/N
        k = features.reshape(b, self.heads, -1, h * w)                             # B x N x C/N x HW
        attn = ((q @ k) * self.scale).softmax(dim=-1)                              # B x N x T x HW
        out = (attn @ k.transpose(-1, -2)).permute(2, 0, 1, 3).reshape(t, b, -1)   # T x B x C
        out = out * (self.alpha(tokens) * 2.0)
        return self.layer_norm(tokens + self.drop_path(self.proj(out)))


class Former(nn.Module):
    """Token self-attention (k = v = tokens), channel MLP and FFN, post-norm."""

    def __init__(self, token_dim: int, heads: int = 2, drop_path: float = 0.0):
        super().__init__()
        self.heads = heads
        self.scale = (token_dim // heads) ** -0.5
        self.q = nn.Linear(token_dim, token_dim)
        self.channel_mlp = nn.Linear(token_dim, token_dim)
        self.layer_norm = nn.LayerNorm(token_dim)
        self.ffn = nn.Sequential(nn.Linear(token_dim, token_dim * 2), nn.GELU(), nn.Linear(token_dim * 2, token_dim))
        self.ffn_norm = nn.LayerNorm(token_dim)
        self.drop_path = DropPath(drop_path)

    def forward(self, tokens):
        t, b, c = tokens.shape
        q = self.q(tokens).reshape(t, b, self.heads, -1).permute(1, 2, 0, 3)      # B x N x T x C/N
        k = tokens.permute(1, 2, 0).reshape(b, self.heads, -1, t)                  # B x N x C/N x T
        attn = ((q @ k) * self.scale).softmax(dim=-1)
        out = (attn @ k.transpose(-1, -2)).permute(2, 0, 1, 3).reshape(t, b, -1)
        tokens = self.layer_norm(tokens + self.drop_path(self.channel_mlp(out)))
        return self.ffn_norm(tokens + self.ffn(tokens))


class Former2Mobile(nn.Module):
    """Every pixel attends to the tokens (q = features, k = linear(tokens), v = proj(tokens))."""

    def __init__(self, channels: int, token_dim: int, heads: int = 2, drop_path: float = 0.0):
        super().__init__()
        self.heads = heads
        self.scale = (channels // heads) ** -0.5
        self.k = nn.Linear(token_dim, channels)
        self.proj = nn.Linear(token_dim, channels)
        self.drop_path = DropPath(drop_path)

    def forward(self, features, tokens):
        b, c, h, w = features.shape
        t = tokens.shape[0]
        v = self.proj(tokens).permute(1, 2, 0)                                      # B x C x T
        q = features.reshape(b, self.heads, -1, h * w).transpose(-1, -2)            # B x N x HW x C/N
        k = self.k(tokens).permute(1, 2, 0).reshape(b, self.heads, -1, t)           # B x N x C/N x T
        attn = ((q @ k) * self.scale).softmax(dim=-1)                               # B x N x HW x T
        out = attn @ v.reshape(b, self.heads, -1, t).transpose(-1, -2)              # B x N x HW x C/N
        return features + self.drop_path(out.transpose(-1, -2).reshape(b, c, h, w))


class _Bridged(nn.Module):
    def _bridges(self, inp, oup, token_dim, drop_path):
        self.local_global = Mobile2Former(inp, token_dim, drop_path=drop_path)
        self.global_block = Former(token_dim, drop_path=drop_path)
        self.global_local = Former2Mobile(oup, token_dim, drop_path=drop_path)


class PlainBlock(nn.Module):
    """A block without a Former (expansion 1 or no second expansion): dw 3x3 -> pw-linear."""

    def __init__(self, inp, oup, stride, e1, groups):
        super().__init__()
        self.identity = stride == 1 and inp == oup
        mid = inp * e1
        layers = [nn.Conv2d(inp, mid, 3, stride, 1, groups=inp, bias=False), nn.BatchNorm2d(mid), nn.ReLU6()]
        if groups > 1:
            layers.append(ChannelShuffle(inp))
        layers += [nn.Conv2d(mid, oup, 1, groups=groups, bias=False), nn.BatchNorm2d(oup)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x: Tuple[torch.Tensor, torch.Tensor]):
        features, tokens = x
        out = self.conv(features)
        return (out + features if self.identity else out), tokens


class DownBlock(_Bridged):
    """Mobile-Former block used for down-sampling ("DnaBlock3"): dw -> pw -> dw -> pw with two
    dynamic ReLUs, plus the Mobile->Former / Former / Former->Mobile bridge."""

    def __init__(self, inp, oup, stride, e1, e2, groups, token_dim, drop_path):
        super().__init__()
        self.identity = stride == 1 and inp == oup
        h1, h2 = round(inp * e1), round(oup * e2)
        self.conv1 = _bn_conv(inp, h1, 3, stride, groups=inp, shuffle=inp if groups > 1 else 0)
        self.hyper1 = Hyper(token_dim, h1)
        self.conv2 = _bn_conv(h1, oup, 1, groups=groups)
        self.conv3 = _bn_conv(oup, h2, 3, 1, groups=oup, shuffle=oup if groups > 1 else 0)
        self.hyper3 = Hyper(token_dim, h2)
        self.conv4 = _bn_conv(h2, oup, 1, groups=groups)
        self._bridges(inp, oup, token_dim, drop_path)

    def forward(self, x):
        features, tokens = x
        tokens = self.global_block(self.local_global(features, tokens))
        out = dyrelu(self.conv1(features), self.hyper1(tokens))
        out = self.conv2(out)
        skip = out
        out = dyrelu(self.conv3(out), self.hyper3(tokens))
        out = self.conv4(out) + skip
        out = self.global_local(out, tokens)
        return (out + features if self.identity else out), tokens


class Block(_Bridged):
    """Mobile-Former block ("DnaBlock"): pw -> dw -> pw with two dynamic ReLUs, plus the bridge."""

    def __init__(self, inp, oup, stride, e1, groups, token_dim, drop_path):
        super().__init__()
        self.identity = stride == 1 and inp == oup
        hid = round(inp * e1)
        self.conv1 = _bn_conv(inp, hid, 1, groups=groups, shuffle=groups)
        self.hyper1 = Hyper(token_dim, hid)
        self.conv2 = _bn_conv(hid, hid, 3, stride, groups=hid)
        self.hyper2 = Hyper(token_dim, hid)
        self.conv3 = _bn_conv(hid, oup, 1, groups=groups, shuffle=groups)
        self.drop_path = DropPath(drop_path)
        self._bridges(inp, oup, token_dim, drop_path)

    def forward(self, x):
        features, tokens = x
        tokens = self.global_block(self.local_global(features, tokens))
        out = dyrelu(self.conv1(features), self.hyper1(tokens))
        out = dyrelu(self.conv2(out), self.hyper2(tokens))
        out = self.conv3(out)
        if self.identity:
            out = self.drop_path(out) + features
        return self.global_local(out, tokens), tokens


class Classifier(nn.Module):
    """1x1 expansion conv, pooled, concatenated with the first token, FC (BN, h-swish), head."""

    def __init__(self, inp, num_features, num_classes, token_dim, groups, drop_rate):
        super().__init__()
        hid = inp * 6
        layers: List[nn.Module] = [ChannelShuffle(groups)] if groups > 1 else []
        layers += [nn.Conv2d(inp, hid, 1, groups=groups, bias=False), nn.BatchNorm2d(hid), nn.ReLU6()]
        self.conv = nn.Sequential(*layers)
        self.avgpool = nn.Sequential(nn.AdaptiveAvgPool2d(1), HSwish())
        self.fc = nn.Sequential(nn.Linear(hid + token_dim, num_features), nn.BatchNorm1d(num_features), HSwish())
        self.classifier = nn.Sequential(nn.Dropout(drop_rate), nn.Linear(num_features, num_classes))

    def forward(self, features, tokens):
        x = self.avgpool(self.conv(features)).flatten(1)
        return self.classifier(self.fc(torch.cat([x, tokens[0]], dim=1)))


# (block, e1, channels, stride, e2); 'D' = DownBlock (DnaBlock3), 'B' = Block (DnaBlock)
_BLOCKS_A = [("D", 3, 12, 2, 0), ("B", 3, 12, 1, 3), ("D", 6, 24, 2, 4), ("B", 3, 24, 1, 3), ("D", 6, 48, 2, 4),
             ("B", 4, 48, 1, 4), ("B", 6, 64, 1, 4), ("D", 6, 96, 2, 4), ("B", 6, 96, 1, 4)]
MOBILEFORMER_CONFIGS = {
    "26m": dict(blocks=_BLOCKS_A, stem=8, tokens=3, token_dim=128, num_features=1024, groups=4),
    "52m": dict(blocks=_BLOCKS_A, stem=8, tokens=3, token_dim=128, num_features=1024, groups=1),
    "96m": dict(blocks=[("D", 2, 12, 1, 0), ("D", 6, 16, 2, 4), ("D", 6, 32, 2, 4), ("B", 3, 32, 1, 3),
                        ("D", 6, 64, 2, 4), ("B", 4, 64, 1, 4), ("B", 6, 88, 1, 4), ("D", 6, 128, 2, 4),
                        ("B", 6, 128, 1, 4)], stem=12, tokens=4, token_dim=128, num_features=1280, groups=1),
    "151m": dict(blocks=[("D", 2, 12, 1, 0), ("D", 6, 16, 2, 4), ("B", 3, 16, 1, 3), ("D", 6, 32, 2, 4),
                         ("B", 3, 32, 1, 3), ("D", 6, 64, 2, 4), ("B", 4, 64, 1, 4), ("B", 6, 88, 1, 4),
                         ("B", 6, 88, 1, 4), ("D", 6, 128, 2, 4), ("B", 6, 128, 1, 4), ("B", 6, 128, 1, 4)],
                 stem=12, tokens=6, token_dim=192, num_features=1280, groups=1),
    "214m": dict(blocks=[("D", 2, 12, 1, 0), ("D", 6, 20, 2, 4), ("B", 3, 20, 1, 4), ("D", 6, 40, 2, 4),
                         ("B", 4, 40, 1, 4), ("D", 6, 80, 2, 4), ("B", 4, 80, 1, 4), ("B", 6, 112, 1, 4),
                         ("B", 6, 112, 1, 4), ("D", 6, 160, 2, 4), ("B", 6, 160, 1, 4), ("B", 6, 160, 1, 4)],
                 stem=12, tokens=6, token_dim=192, num_features=1600, groups=1),
    "294m": dict(blocks=[("D", 2, 16, 1, 0), ("D", 6, 24, 2, 4), ("B", 4, 24, 1, 4), ("D", 6, 48, 2, 4),
                         ("B", 4, 48, 1, 4), ("D", 6, 96, 2, 4), ("B", 4, 96, 1, 4), ("B", 6, 128, 1, 4),
                         ("B", 6, 128, 1, 4), ("D", 6, 192, 2, 4), ("B", 6, 192, 1, 4), ("B", 6, 192, 1, 4)],
                 stem=16, tokens=6, token_dim=192, num_features=1920, groups=1),
    "508m": dict(blocks=[("D", 2, 24, 1, 0), ("D", 6, 40, 2, 4), ("B", 3, 40, 1, 3), ("D", 6, 72, 2, 4),
                         ("B", 3, 72, 1, 3), ("D", 6, 128, 2, 4), ("B", 4, 128, 1, 4), ("B", 6, 176, 1, 4),
                         ("B", 6, 176, 1, 4), ("D", 6, 240, 2, 4), ("B", 6, 240, 1, 4), ("B", 6, 240, 1, 4)],
                 stem=24, tokens=6, token_dim=192, num_features=1920, groups=1),
}


class MobileFormer(nn.Module):
    def __init__(self, blocks: Sequence[tuple], stem: int, tokens: int, token_dim: int, num_features: int,
                 groups: int = 1, num_classes: int = 1000, in_chans: int = 3, drop_rate: float = 0.0,
                 drop_path_rate: float = 0.0, **kwargs):
        super().__init__()
        self.num_classes = num_classes
        self.tokens = nn.Embedding(tokens, token_dim)
        self.stem = nn.Sequential(nn.Conv2d(in_chans, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU6())
        layers: List[nn.Module] = []
        inp = stem
        for i, (block_type, e1, c, s, e2) in enumerate(blocks):
            oup = _divisible(c, 4)
            dp = drop_path_rate * (i + 1) / len(blocks)
            if e1 == 1 or e2 == 0:
                layers.append(PlainBlock(inp, oup, s, e1, groups))
            elif block_type == "D":
                layers.append(DownBlock(inp, oup, s, e1, e2, groups, token_dim, dp))
            else:
                layers.append(Block(inp, oup, s, e1, groups, token_dim, dp))
            inp = oup
        self.features = nn.Sequential(*layers)
        self.local_global = Mobile2Former(inp, token_dim, drop_path=drop_path_rate)
        self.classifier = Classifier(inp, num_features, num_classes, token_dim, groups, drop_rate)
        self.num_features = num_features
        self._init()

    def _init(self):
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                n = m.kernel_size[0] * m.kernel_size[1] * m.out_channels
                nn.init.normal_(m.weight, 0, (2.0 / n) ** 0.5)
            elif isinstance(m, (nn.BatchNorm2d, nn.BatchNorm1d)):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def get_classifier(self):
        return self.classifier.classifier[1]

    def reset_classifier(self, num_classes: int):
        self.num_classes = num_classes
        old = self.classifier.classifier[1]
        self.classifier.classifier[1] = nn.Linear(old.in_features, num_classes)

    def forward(self, x):
        b = x.shape[0]
        tokens = self.tokens.weight[None].repeat(b, 1, 1).permute(1, 0, 2)          # T x B x C
        x, tokens = self.features((self.stem(x), tokens))
        tokens = self.local_global(x, tokens)
        return self.classifier(x, tokens)


def _cfg(**kw):
    return {"url": "", "num_classes": 1000, "input_size": (3, 224, 224), "pool_size": (1, 1), "crop_pct": 0.875,
            "interpolation": "bilinear", "mean": (0.485, 0.456, 0.406), "std": (0.229, 0.224, 0.225),
            "first_conv": "stem.0", "classifier": "classifier.classifier.1", **kw}


def _make(size: str):
    def fn(pretrained: bool = False, **kwargs) -> MobileFormer:
        if pretrained:
            raise RuntimeError(f"no pretrained Mobile-Former weights are published for timm; train one "
                               f"(benchmarks/train_cifar.py mobileformer_{size}) and pass --weights")
        kwargs.pop("pretrained_cfg", None)
        kwargs.pop("pretrained_cfg_overlay", None)
        kwargs.pop("cache_dir", None)
        m = MobileFormer(**MOBILEFORMER_CONFIGS[size], **kwargs)
        m.pretrained_cfg = _cfg()
        m.default_cfg = m.pretrained_cfg
        return m
    fn.__name__ = f"mobileformer_{size}"
    fn.__doc__ = f"Mobile-Former {size.upper()} FLOPs ({PAPER_PARAMS_M[size]} M parameters in the paper)."
    return fn


import timm as _timm  # noqa: E402

for _size in MOBILEFORMER_CONFIGS:
    if not _timm.is_model(f"mobileformer_{_size}"):
        register_model(_make(_size))
