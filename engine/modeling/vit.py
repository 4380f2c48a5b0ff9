"""DINO's Vision Transformer (Caron et al., ICCV 2021), written once with DINO's module and parameter names, so
that DINO's released backbone files load into it strictly: the self-supervised ViT of the methods built on one
(NENO).

Architecture (DINO's ``vision_transformer.py``; timm's ``vit_small_patch16_224`` is the same network): the image
cut into non-overlapping ``p x p`` patches by a convolution (``patch_embed.proj``, with bias), a learned class
token (``cls_token``) before them, learned positions added (``pos_embed``), pre-norm transformer blocks
(``blocks.i.norm1``, ``attn.qkv`` with bias, ``attn.proj``, ``norm2``, ``mlp.fc1``, GELU, ``mlp.fc2``; LayerNorm
eps 1e-6), a last LayerNorm (``norm``); the feature is the class token's output. No head (DINO's backbone files
have none).

``MODEL.BACKBONE.NAME`` names the size (:data:`ARCHITECTURES`): ``dino_vits16`` (ViT-S/16, 384-d, 12 blocks of 6
heads: DINO's ``dino_deitsmall16_pretrain.pth``), ``dino_vitb16`` (ViT-B/16, 768-d: ``dino_vitbase16_pretrain.pth``)
or ``dino_vit_tiny`` (4-pixel patches, 64-d, 2 blocks of 2 heads, random weights: CPU tests and demos). The network
is built for ``INPUT.SIZE`` (square, a multiple of the patch size); the positions of DINO's files are those of
224 px, so they fit INPUT.SIZE (224, 224) only (a load at another size is refused, naming ``pos_embed``; DINO
itself interpolates them, which we do not).

``MODEL.BACKBONE.WEIGHTS`` is a local file (nothing is downloaded): DINO's backbone-only state dict, or a full
DINO training checkpoint (``checkpoint.pth``: the ``teacher`` network is taken, as DINO's own evaluation does,
else ``student``; the ``module.`` and ``backbone.`` prefixes are removed and the DINO projection head left out,
said in the log). The load is strict: a missing tensor, one of another shape or one this network does not have
is one error line naming the file and the first keys. Without a file the network starts from DINO's random
initialisation, said in one log line.

``MODEL.CLS_ONLY_LAST_BLOCK`` (default on): the last block computes the class token's output alone (its keys and
values still come from every token), the only output the feature reads: the same feature and parameters, less
work, as for CLIP's ViT (:mod:`engine.modeling.clip_backbone`). ``MODEL.PATCH_EMBED_MATMUL`` does not apply here.
"""
from __future__ import annotations

import argparse
import contextlib
import logging
import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from engine.modeling.state_dicts import mismatched_keys
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ViTArchitecture:
    patch_size: int
    width: int
    depth: int
    heads: int
    mlp_ratio: float = 4.0


ARCHITECTURES = {
    "dino_vits16": ViTArchitecture(patch_size=16, width=384, depth=12, heads=6),
    "dino_vitb16": ViTArchitecture(patch_size=16, width=768, depth=12, heads=12),
    "dino_vit_tiny": ViTArchitecture(patch_size=4, width=64, depth=2, heads=2),
}
# DINO's training checkpoint holds both networks; its evaluation scripts take the teacher
CHECKPOINT_NETWORKS = ("teacher", "student")


def is_vit_name(name: str) -> bool:
    return name in ARCHITECTURES


class PatchEmbed(nn.Module):
    """Non-overlapping patches to tokens: ``(B, 3, H, W) -> (B, (H/p)(W/p), D)``."""

    def __init__(self, patch_size: int, width: int) -> None:
        super().__init__()
        self.proj = nn.Conv2d(3, width, kernel_size=patch_size, stride=patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Attention(nn.Module):
    """Multi-head self-attention with one ``qkv`` projection (DINO's names)."""

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width)
        self.proj = nn.Linear(width, width)

    def forward(self, x: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
        """``(B, N, D) -> (B, N, D)``; with ``class_token_only`` the first token's output alone, ``(B, 1, D)``:
        its query only, attending to every token's key and value."""
        b, n, d = x.shape
        h = self.heads
        if class_token_only:
            q = F.linear(x[:, :1], self.qkv.weight[:d], self.qkv.bias[:d]).reshape(b, 1, 1, h, d // h)
            kv = F.linear(x, self.qkv.weight[d:], self.qkv.bias[d:]).reshape(b, n, 2, h, d // h)
            q, k, v = q.permute(2, 0, 3, 1, 4)[0], *kv.permute(2, 0, 3, 1, 4).unbind(0)
        else:
            q, k, v = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4).unbind(0)  # (B, h, N, d/h)
        out = F.scaled_dot_product_attention(q, k, v)  # softmax(q k^T / sqrt(d/h)) v, DINO's scale
        return self.proj(out.transpose(1, 2).reshape(b, q.shape[2], d))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm1(x))``, then ``x + mlp(norm2(x))``."""

    def __init__(self, width: int, heads: int, mlp_ratio: float) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width, eps=1e-6)
        self.attn = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width, eps=1e-6)
        self.mlp = Mlp(width, int(width * mlp_ratio))

    def forward(self, x: torch.Tensor, class_token_only: bool = False) -> torch.Tensor:
        x = (x[:, :1] if class_token_only else x) + self.attn(self.norm1(x), class_token_only)
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """DINO's ViT for square ``image_size`` inputs; ``forward`` returns the class token's feature ``(B, D)``."""

    def __init__(self, arch: ViTArchitecture, image_size: int, class_token_only_last_block: bool = True,
                 name: str = "vit") -> None:
        super().__init__()
        self.name, self.image_size = name, image_size
        self.output_dim = arch.width
        self.class_token_only_last_block = class_token_only_last_block
        num_patches = (image_size // arch.patch_size) ** 2
        self.patch_embed = PatchEmbed(arch.patch_size, arch.width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, arch.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, num_patches + 1, arch.width))
        self.blocks = nn.ModuleList(Block(arch.width, arch.heads, arch.mlp_ratio) for _ in range(arch.depth))
        self.norm = nn.LayerNorm(arch.width, eps=1e-6)
        # DINO's initialisation: truncated normal (std 0.02) for the positions, the class token and every linear
        # layer's weight, zero biases, unit LayerNorms; the patch convolution keeps PyTorch's default
        nn.init.trunc_normal_(self.pos_embed, std=0.02)
        nn.init.trunc_normal_(self.cls_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.trunc_normal_(m.weight, std=0.02)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(images)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        last = len(self.blocks) - 1
        for i, block in enumerate(self.blocks):
            x = block(x, class_token_only=self.class_token_only_last_block and i == last)
        return self.norm(x[:, 0])


def read_dino_weights(path: str) -> dict[str, torch.Tensor]:
    """The backbone state dict in ``path``: DINO's backbone-only file as it is, or from a full DINO training
    checkpoint the ``teacher`` (else ``student``) network with its ``module.`` and ``backbone.`` prefixes removed
    and its projection head left out (see the module docstring). A missing or unreadable file is a
    :class:`UserError`."""
    if not os.path.isfile(path):
        raise UserError(f"ViT weights file not found: {path} (MODEL.BACKBONE.WEIGHTS)")
    try:
        # a full DINO checkpoint also holds its argparse arguments: allowed, nothing else but tensors and builtins
        # (torch < 2.5 has no safe_globals: such a checkpoint is then refused, DINO's backbone file still loads)
        allow = getattr(torch.serialization, "safe_globals", None)
        with allow([argparse.Namespace]) if allow else contextlib.nullcontext():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file raises many types; all mean the same to a user
        reason = " ".join(str(e).split())[:160]
        raise UserError(f"cannot read ViT weights {path}: {type(e).__name__}: {reason}") from None
    where = []
    if isinstance(state, dict):
        for key in (*CHECKPOINT_NETWORKS, "state_dict", "model"):
            if isinstance(state.get(key), dict):
                state, where = state[key], [f"'{key}'"]
                break
    if not isinstance(state, dict) or not state or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"ViT weights {path} hold no state dict of tensors (expected DINO's backbone file or a "
                        f"DINO checkpoint with a 'teacher' or 'student' state dict)")
    for prefix in ("module.", "backbone."):
        if any(k.startswith(prefix) for k in state):
            left_out = [k for k in state if not k.startswith(prefix)]
            state = {k[len(prefix):]: v for k, v in state.items() if k.startswith(prefix)}
            where.append(f"'{prefix}' prefix removed" + (f", {len(left_out)} other tensors (DINO's head) left out"
                                                         if left_out else ""))
    if where:
        logger.info("ViT weights %s: %s", path, "; ".join(where))
    return state


def load_dino_weights(vit: VisionTransformer, path: str) -> None:
    """Load :func:`read_dino_weights` ``(path)`` into ``vit`` strictly (see the module docstring)."""
    state = read_dino_weights(path)
    own = vit.state_dict()
    problems, wrong = mismatched_keys(own, state)
    if problems:
        hint = ("; pos_embed fixes the input size: DINO's files take INPUT.SIZE (224, 224)"
                if any(w.startswith("pos_embed ") for w in wrong) else "")
        raise UserError(f"ViT weights {path} do not fit {vit.name} at {vit.image_size} px: {'; '.join(problems)} "
                        f"keys{hint}")
    vit.load_state_dict(state)
    logger.info("Loaded %s weights from %s (%d tensors)", vit.name, path, len(own))


def build_vit(cfg) -> VisionTransformer:
    """``MODEL.BACKBONE.NAME`` for ``INPUT.SIZE``, from ``MODEL.BACKBONE.WEIGHTS`` (random weights, said in the log,
    when it is empty)."""
    name = cfg.MODEL.BACKBONE.NAME
    if name not in ARCHITECTURES:
        raise UserError(f"unknown ViT '{name}' (MODEL.BACKBONE.NAME); choose from {', '.join(ARCHITECTURES)}")
    arch = ARCHITECTURES[name]
    height, width = (int(s) for s in cfg.INPUT.SIZE)
    if height != width or height % arch.patch_size:
        raise UserError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not fit {name}: it takes square images whose side is "
                        f"a multiple of its patch size {arch.patch_size}")
    vit = VisionTransformer(arch, height, bool(cfg.MODEL.CLS_ONLY_LAST_BLOCK), name)
    if cfg.MODEL.BACKBONE.WEIGHTS:
        load_dino_weights(vit, cfg.MODEL.BACKBONE.WEIGHTS)
    else:
        logger.info("%s starts from random weights (MODEL.BACKBONE.WEIGHTS is empty)", name)
    return vit
