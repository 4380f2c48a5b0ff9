"""CLIP text-side pieces shared by every CLIP trainer: encoding fixed sentences and running the
text transformer on learnable prompt embeddings (CoOp's ``TextEncoder``)."""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from engine.modeling.clip_backbone import token_length, tokenize
from engine.utils.errors import UserError


class TextEncoder(nn.Module):
    """CLIP's text transformer applied to token *embeddings* rather than token ids.

    ``forward(prompts, tokenized_prompts)``: ``prompts`` is ``(n, 77, width)`` (for example
    learnable context vectors spliced between token embeddings); ``tokenized_prompts`` gives, through
    its argmax, the end-token position whose output is the sentence feature, as in CLIP.
    """

    def __init__(self, clip_model: nn.Module) -> None:
        super().__init__()
        self.transformer = clip_model.transformer
        self.positional_embedding = clip_model.positional_embedding
        self.ln_final = clip_model.ln_final
        self.text_projection = clip_model.text_projection

    def forward(self, prompts: torch.Tensor, tokenized_prompts: torch.Tensor) -> torch.Tensor:
        x = prompts + self.positional_embedding.type_as(prompts)
        x = self.transformer(x.permute(1, 0, 2)).permute(1, 0, 2)  # CLIP's transformer is length-first
        x = self.ln_final(x)
        eot = tokenized_prompts.argmax(dim=-1)  # the end token has the largest id
        return x[torch.arange(x.shape[0], device=x.device), eot] @ self.text_projection


@torch.no_grad()
def encode_sentences(clip_model: nn.Module, sentences: list[str], device: torch.device | str = "cpu"
                     ) -> torch.Tensor:
    """L2-normalised CLIP features of fixed sentences, ``(len(sentences), embed_dim)``, no gradient."""
    tokens = tokenize(sentences).to(device)
    return F.normalize(clip_model.encode_text(tokens).float(), dim=-1)


class PromptLearner(nn.Module):
    """Learnable context vectors spliced into CLIP prompts (CoOp), one prompt per class.

    Each prompt is ``[SOS] ctx_1..ctx_n <text tokens> [EOS]`` (``position="end"``), where ``text`` is
    the class's text: its name for CoOp (``"anger."``), a facial-behaviour description for PromptEmo.
    ``class_specific`` gives every class its own ``n_ctx`` vectors (CoOp's CSC; PromptEmo's delta_k);
    otherwise one shared set. ``position`` ``"middle"``/``"front"`` put the text in the middle of or
    before the context, as in CoOp. ``n_ctx = 0`` gives fixed prompts (no parameters).

    Context vectors start from N(0, init_std^2), or from the embeddings of ``init_words`` (CoOp's
    ``CTX_INIT``, e.g. ``"a photo of a"``; then ``n_ctx`` is their token count). The token embeddings of the fixed parts are
    non-persistent buffers: checkpoints hold only the learned vectors. A text that does not fit the
    77-token window with its context is rejected, never cut.
    """

    def __init__(self, clip_model: nn.Module, texts: list[str], n_ctx: int = 16, class_specific: bool = False,
                 position: str = "end", init_std: float = 0.02, names: list[str] | None = None,
                 init_words: str = "") -> None:
        super().__init__()
        if position not in ("end", "middle", "front"):
            raise UserError(f"class token position must be end, middle or front, got '{position}'")
        init_words = init_words.replace("_", " ").strip()
        if init_words:  # CoOp's CTX_INIT: the context starts as these words' embeddings, one vector each
            n_ctx = token_length(init_words)
        context_length = clip_model.positional_embedding.shape[0]
        names = names or texts
        self.text_lens = []
        for name, text in zip(names, texts):
            n = token_length(text)
            if 2 + n_ctx + n > context_length:
                raise UserError(f"the prompt text of '{name}' has {n} tokens; with {n_ctx} context vectors it "
                                f"must have at most {context_length - 2 - n_ctx}: \"{text}\"")
            self.text_lens.append(n)
        self.n_cls, self.n_ctx, self.position = len(texts), n_ctx, position
        width = clip_model.ln_final.weight.shape[0]
        device = clip_model.token_embedding.weight.device  # token ids must meet the embedding there
        if init_words:
            with torch.no_grad():
                words = clip_model.token_embedding(tokenize([init_words]).to(device))[0, 1: 1 + n_ctx].float()
            self.ctx = nn.Parameter(words.expand(self.n_cls, -1, -1).clone() if class_specific else words.clone())
        elif n_ctx > 0:
            shape = (self.n_cls, n_ctx, width) if class_specific else (n_ctx, width)
            self.ctx = nn.Parameter(torch.empty(shape).normal_(std=init_std))
        else:
            self.ctx = None
        slots = " ".join(["X"] * n_ctx)  # stand-ins for the context vectors, as in CoOp
        tokenized = tokenize([f"{slots} {t}".strip() for t in texts]).to(device)
        with torch.no_grad():
            embedding = clip_model.token_embedding(tokenized).float()
        self.register_buffer("tokenized_prompts", tokenized, persistent=False)
        self.register_buffer("token_prefix", embedding[:, :1], persistent=False)  # SOS
        self.register_buffer("token_suffix", embedding[:, 1 + n_ctx:], persistent=False)  # text, EOS, padding

    def forward(self) -> torch.Tensor:
        """Prompt embeddings ``(n_cls, 77, width)`` for :class:`TextEncoder`."""
        prefix, suffix = self.token_prefix, self.token_suffix
        if self.ctx is None:
            return torch.cat([prefix, suffix], dim=1)
        ctx = self.ctx if self.ctx.dim() == 3 else self.ctx.unsqueeze(0).expand(self.n_cls, -1, -1)
        if self.position == "end":
            return torch.cat([prefix, ctx, suffix], dim=1)
        prompts = []
        half = self.n_ctx // 2
        for i, n in enumerate(self.text_lens):
            text, rest = suffix[i: i + 1, :n], suffix[i: i + 1, n:]
            if self.position == "middle":
                parts = [prefix[i: i + 1], ctx[i: i + 1, :half], text, ctx[i: i + 1, half:], rest]
            else:
                parts = [prefix[i: i + 1], text, ctx[i: i + 1], rest]
            prompts.append(torch.cat(parts, dim=1))
        return torch.cat(prompts, dim=0)
