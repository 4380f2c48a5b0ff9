"""The CLIP backbone every CLIP trainer shares.

``MODEL.BACKBONE.NAME`` is one of:

- an OpenAI model name (``ViT-B/32``...): read from ``MODEL.BACKBONE.DOWNLOAD_ROOT`` (default
  ``~/.cache/clip``, as ``clip.load``), downloaded there by ``clip``'s own downloader (SHA256
  checked) when missing and the network is up;
- a path to a local checkpoint file (a downloaded ``ViT-B-32.pt``, or a state dict saved with
  ``torch.save``), for offline machines. Names and paths go through the same file loader
  (:func:`load_clip_file`);
- a tiny CLIP *pretrained* on synthetic face/caption pairs, written to a file by
  ``scripts/pretrain_tiny_clip.py`` (CLIP's ResNet image encoder at 64 px): the CPU stand-in for
  OpenAI's weights in the demo (``configs/trainers/*/tiny_pretrained.yaml``), loaded as a path;
- ``tiny``: CLIP's own architecture (ViT image encoder, transformer text encoder, the same BPE
  tokenizer and 77-token context) at small widths with random weights, for tests and CPU demos.
  Like every CLIP at initialisation its logit scale is 1/0.07 (14.3), not the trained models' 100:
  with random features a scale of 100 saturates the softmax and, measured on the synthetic domains,
  nothing learned in 30 epochs, while 1/0.07 learns.
- ``random:ViT-B/32`` (or ``random:ViT-B/16``): a released architecture with random weights, for
  throughput benchmarks on machines without the weights.

``MODEL.PATCH_EMBED_MATMUL`` computes a ViT's patch embedding (a convolution whose kernel equals its
stride) as one matrix product over the image's non-overlapping patches: the same weights, checkpoint keys
and result (up to float rounding). On an H200 (``docs/performance.md``) it removed cuDNN's kernels for the
32x32, stride-32 convolution, 18% of the fast path's GPU time, but the host-bound step did not get faster,
so the key is off by default.

``MODEL.CLS_ONLY_LAST_BLOCK`` (default on) computes only the class token's output in a ViT's last block:
the image feature is that token alone (``ln_post(x[:, 0])``), so the other tokens' query projection,
attention output and MLP there are work thrown away. Their keys and values are still computed (the class
token attends to every token), so the feature is the same up to float rounding, with the same parameters
and checkpoint keys. For ViT-B/32 (50 tokens, 12 blocks) that removes about 6.6% of the image encoder's
matrix-product work (forward and backward): of the 12 d^2 multiply-adds per token and block (QKV 3, output
1, MLP 8), the last block keeps 2 (keys and values) plus 10 for the class token alone, next to the patch
embedding's 4 d^2 per token.

The model is always returned in fp32 on the CPU (``clip.load`` gives fp16 on CUDA, which AdamW
cannot fine-tune); trainers move it to their device and use autocast for speed.
"""
from __future__ import annotations

import os
import urllib.error
import warnings

import torch
from torch import nn

from engine.utils.errors import UserError

with warnings.catch_warnings():
    # openai-clip imports pkg_resources, which warns about its own deprecation on import.
    warnings.simplefilter("ignore")
    import clip
    from clip.model import CLIP, ResidualAttentionBlock, VisionTransformer, build_model

TINY = "tiny"
# Widths are multiples of 64 because clip.model.build_model derives head counts as width // 64.
TINY_CLIP_ARCH = dict(
    embed_dim=64,
    image_resolution=32,
    vision_layers=3,
    vision_width=128,
    vision_patch_size=4,
    context_length=77,
    vocab_size=49408,
    transformer_width=64,
    transformer_heads=1,
    transformer_layers=2,
)


# The released architectures, for "random:<name>" (random weights: throughput benchmarks offline)
OPENAI_ARCHS = {
    "ViT-B/32": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=32,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
    "ViT-B/16": dict(embed_dim=512, image_resolution=224, vision_layers=12, vision_width=768, vision_patch_size=16,
                     context_length=77, vocab_size=49408, transformer_width=512, transformer_heads=8,
                     transformer_layers=12),
}
RANDOM_PREFIX = "random:"


def build_tiny_clip(seed: int | None = None) -> CLIP:
    """A randomly initialised CLIP with :data:`TINY_CLIP_ARCH` (fp32, eval mode)."""
    gen_state = torch.get_rng_state()
    if seed is not None:
        torch.manual_seed(seed)
    try:
        model = CLIP(**TINY_CLIP_ARCH)
    finally:
        if seed is not None:
            torch.set_rng_state(gen_state)
    return model.float().eval()


def save_tiny_clip(path: str, seed: int = 0, torchscript: bool = False) -> str:
    """Write a tiny CLIP to ``path``: a state dict, or (``torchscript``) a traced TorchScript archive
    like OpenAI's released files. ``load_clip(path)`` reads either as it reads ``ViT-B-32.pt``."""
    model = build_tiny_clip(seed)
    if torchscript:
        res = TINY_CLIP_ARCH["image_resolution"]
        example = (torch.zeros(1, 3, res, res), clip.tokenize(["a face"]))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), path)
    else:
        torch.save(model.state_dict(), path)
    return path


def load_clip(name: str, download_root: str | None = None) -> CLIP:
    """Load the CLIP model named by ``MODEL.BACKBONE.NAME`` (see module docstring), fp32 on CPU."""
    if name == TINY:
        return build_tiny_clip()
    if name.startswith(RANDOM_PREFIX):
        arch = name[len(RANDOM_PREFIX):]
        if arch not in OPENAI_ARCHS:
            raise UserError(f"unknown architecture '{arch}' in MODEL.BACKBONE.NAME {name}; "
                            f"choose from {', '.join(RANDOM_PREFIX + a for a in OPENAI_ARCHS)}")
        return CLIP(**OPENAI_ARCHS[arch]).float().eval()
    if name in clip.available_models():
        root = download_root or os.path.expanduser("~/.cache/clip")
        try:
            path = clip.clip._download(clip.clip._MODELS[name], root)  # checks the SHA256, reuses the cache
        except (urllib.error.URLError, OSError, ConnectionError) as e:
            raise UserError(f"cannot get CLIP {name}: not in {root} and the download failed ({e}); "
                            f"copy {name.replace('/', '-')}.pt there or set MODEL.BACKBONE.NAME to its path") from None
        return load_clip_file(path)
    if not os.path.exists(name):
        raise UserError(f"CLIP weights file not found: {name} (MODEL.BACKBONE.NAME must be a path to a CLIP "
                        f"checkpoint, 'tiny', or one of {', '.join(clip.available_models())}; the synthetic demo's "
                        f"pretrained tiny CLIP is unpacked by scripts/pretrain_tiny_clip.py --unpack --out {name})")
    if not os.path.isfile(name):
        raise UserError(f"MODEL.BACKBONE.NAME {name} is a folder; expected a CLIP checkpoint file (.pt)")
    return load_clip_file(name)


def load_clip_file(path: str) -> CLIP:
    """Build CLIP from a checkpoint file: OpenAI's TorchScript archives (what ``clip.load`` downloads)
    or a plain state dict. This is ``clip.load(path, jit=False)`` with one fix: ``clip.load`` does not
    rewind the file after the TorchScript attempt, so state-dict files fail under recent torch."""
    try:
        with open(path, "rb") as f:
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")  # torch.jit.load warns that TorchScript is deprecated
                    state_dict = torch.jit.load(f, map_location="cpu").state_dict()
            except RuntimeError:
                f.seek(0)
                state_dict = torch.load(f, map_location="cpu", weights_only=True)
        state_dict = dict(state_dict)
        model = build_model(state_dict).float()  # build_model also drops non-weight entries from the dict
        # build_model rounds weights through fp16; reload them as saved (fp32 checkpoints stay exact)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in state_dict.items()})
    except Exception as e:  # a damaged file raises many types; all mean the same to a user
        raise UserError(f"cannot load CLIP weights from {path}: not a readable CLIP checkpoint "
                        f"({type(e).__name__}: {' '.join(str(e).split())[:160]})") from None
    return model.float().eval()


def input_resolution(model: CLIP) -> int:
    return int(model.visual.input_resolution)


def check_input_size(cfg, model: CLIP, name: str | None = None) -> None:
    """CLIP's positional embeddings fix the input size: INPUT.SIZE must match it."""
    res = input_resolution(model)
    if tuple(cfg.INPUT.SIZE) != (res, res):
        raise UserError(f"INPUT.SIZE {tuple(cfg.INPUT.SIZE)} does not match the backbone "
                        f"{name or cfg.MODEL.BACKBONE.NAME}, which takes {res}x{res} images; "
                        f"set INPUT.SIZE ({res}, {res})")


def tokenize(texts: list[str], context_length: int = 77) -> torch.Tensor:
    """CLIP's BPE tokenizer; a text longer than the context window is a UserError (never cut)."""
    try:
        return clip.tokenize(texts, context_length=context_length)
    except RuntimeError as e:
        raise UserError(f"prompt too long for CLIP's {context_length}-token context: {e}") from None


def token_length(text: str) -> int:
    """Number of BPE tokens of ``text`` (without the start and end tokens)."""
    return len(clip.clip._tokenizer.encode(text))


def encode_images(image_encoder, images: torch.Tensor, bf16: bool = False) -> torch.Tensor:
    """L2-normalised fp32 features of ``images`` from CLIP's image encoder (``clip_model.visual``, or
    its compiled form), the encoder itself running under bf16 autocast when ``bf16``."""
    with torch.autocast(device_type=images.device.type, dtype=torch.bfloat16, enabled=bf16):
        features = image_encoder(images)
    return torch.nn.functional.normalize(features.float(), dim=-1)


class PatchEmbedMatmul(nn.Conv2d):
    """A non-overlapping patch convolution (kernel = stride, no padding, no bias) computed as one matrix
    product: each ``p x p`` patch, flattened in the (channel, row, column) order of the kernel, times the
    flattened kernel. Returns ``[B, width, grid, grid]`` like the convolution, as a channels-last view, so
    that CLIP's following ``reshape``/``permute`` to ``[B, grid**2, width]`` copies nothing."""

    @classmethod
    def replacing(cls, conv: nn.Conv2d) -> "PatchEmbedMatmul":
        """A drop-in for ``conv`` that shares its weight parameter (the state dict keys stay the same)."""
        ok = (conv.kernel_size == conv.stride and conv.padding == (0, 0) and conv.dilation == (1, 1)
              and conv.groups == 1 and conv.bias is None)
        if not ok:
            raise ValueError(f"not a non-overlapping patch convolution: {conv}")
        module = cls(conv.in_channels, conv.out_channels, conv.kernel_size, conv.stride, bias=False,
                     device="meta")
        module.weight = conv.weight
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, channels, height, width = x.shape
        ph, pw = self.kernel_size
        grid_h, grid_w = height // ph, width // pw
        x = x[:, :, :grid_h * ph, :grid_w * pw]  # a strided convolution drops the remainder too
        patches = (x.reshape(batch, channels, grid_h, ph, grid_w, pw)
                   .permute(0, 2, 4, 1, 3, 5)
                   .reshape(batch, grid_h * grid_w, channels * ph * pw))
        out = patches @ self.weight.reshape(self.out_channels, -1).t()
        return out.reshape(batch, grid_h, grid_w, self.out_channels).permute(0, 3, 1, 2)


def use_patch_embed_matmul(model: CLIP) -> CLIP:
    """Swap a ViT image encoder's patch convolution for :class:`PatchEmbedMatmul` (in place); a ResNet
    image encoder has no patch embedding and is returned unchanged."""
    visual = model.visual
    if isinstance(visual, VisionTransformer) and not isinstance(visual.conv1, PatchEmbedMatmul):
        visual.conv1 = PatchEmbedMatmul.replacing(visual.conv1)
    return model


class ClassTokenBlock(ResidualAttentionBlock):
    """CLIP's residual attention block computing the output of the first (class) token only: maps
    ``(L, N, D)`` to ``(1, N, D)``. The class token still attends to all ``L`` tokens. For the last block
    of a ViT image encoder, whose only output used is the class token's (see the module notes)."""

    @classmethod
    def replacing(cls, block: ResidualAttentionBlock) -> "ClassTokenBlock":
        """A drop-in for ``block`` that shares its modules (the state dict keys stay the same)."""
        if block.attn_mask is not None:
            raise ValueError("a masked attention block (CLIP's text encoder) has no single output token")
        with torch.device("meta"):
            module = cls(block.attn.embed_dim, block.attn.num_heads)
        module.attn, module.ln_1, module.mlp, module.ln_2 = block.attn, block.ln_1, block.mlp, block.ln_2
        return module

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        normed = self.ln_1(x)
        cls_token = x[:1] + self.attn(normed[:1], normed, normed, need_weights=False)[0]
        return cls_token + self.mlp(self.ln_2(cls_token))


def use_class_token_last_block(model: CLIP) -> CLIP:
    """Make a ViT image encoder's last block a :class:`ClassTokenBlock` (in place); a ResNet image
    encoder (its attention pooling already queries one token) is returned unchanged."""
    visual = model.visual
    if isinstance(visual, VisionTransformer):
        blocks = visual.transformer.resblocks
        if not isinstance(blocks[-1], ClassTokenBlock):
            blocks[-1] = ClassTokenBlock.replacing(blocks[-1])
    return model


def build_clip_for(cfg, device: torch.device | str, name: str | None = None) -> CLIP:
    """Load CLIP ``name`` (default ``MODEL.BACKBONE.NAME``), check it fits ``INPUT.SIZE`` and move it to
    ``device`` (fp32), with the image encoder's ``MODEL.*`` options applied."""
    name = name or cfg.MODEL.BACKBONE.NAME
    model = load_clip(name, cfg.MODEL.BACKBONE.DOWNLOAD_ROOT or None)
    check_input_size(cfg, model, name)
    if cfg.MODEL.PATCH_EMBED_MATMUL:
        use_patch_embed_matmul(model)
    if cfg.MODEL.CLS_ONLY_LAST_BLOCK:
        use_class_token_last_block(model)
    return model.to(device)
