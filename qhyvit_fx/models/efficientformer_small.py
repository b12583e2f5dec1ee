"""EfficientFormer V1 at small input sizes (``efficientformer_l1_64``, ``_l3_64``, ``_l7_64``).

timm builds EfficientFormer V1's attention-bias table for a fixed 7 x 7 token grid (224 px input)
and ignores ``img_size``, so the model cannot run at 64 px.  These variants are timm's model with
one change: every attention block's bias table is built for the grid the last stage really sees
(``img_size // 32`` per side; 2 x 2 at 64 px).  Layers, names and the single conv -> attention
bridge are otherwise timm's own, so the paper's EfficientFormerV1 rows can be measured on a
CIFAR-10 checkpoint trained at the project's 64 px.
"""
from __future__ import annotations

import timm as _timm
from timm.models import register_model
from timm.models.efficientformer import Attention, MetaBlock1d

__all__ = ["SMALL_INPUT_VARIANTS"]

SMALL_INPUT_VARIANTS = ("l1", "l3", "l7")
_IMG_SIZE = 64


def _make(size: str):
    def fn(pretrained: bool = False, img_size: int = _IMG_SIZE, **kwargs):
        if pretrained:
            raise RuntimeError(f"efficientformer_{size}_{_IMG_SIZE} has no pretrained weights; train one "
                               f"(benchmarks/train_cifar.py efficientformer_{size}_{_IMG_SIZE}) and pass --weights")
        for key in ("pretrained_cfg", "pretrained_cfg_overlay", "cache_dir"):
            kwargs.pop(key, None)
        if img_size % 32:
            raise ValueError(f"img_size {img_size} is not a multiple of 32 (the last stage's stride)")
        model = _timm.create_model(f"efficientformer_{size}", pretrained=False, **kwargs)
        grid = img_size // 32
        for block in model.modules():
            if isinstance(block, MetaBlock1d):
                old = block.token_mixer
                block.token_mixer = Attention(old.qkv.in_features, key_dim=old.key_dim, num_heads=old.num_heads,
                                              attn_ratio=old.attn_ratio, resolution=grid)
        cfg = dict(model.pretrained_cfg)
        cfg.update(input_size=(3, img_size, img_size), pool_size=(grid, grid), hf_hub_id=None, url=None)
        model.pretrained_cfg = cfg
        model.default_cfg = cfg
        return model
    fn.__name__ = f"efficientformer_{size}_{_IMG_SIZE}"
    fn.__doc__ = (f"timm's efficientformer_{size} with attention biases for a {_IMG_SIZE // 32} x {_IMG_SIZE // 32} "
                  f"final grid ({_IMG_SIZE} px input).")
    return fn


for _size in SMALL_INPUT_VARIANTS:
    if not _timm.is_model(f"efficientformer_{_size}_{_IMG_SIZE}"):
        register_model(_make(_size))
