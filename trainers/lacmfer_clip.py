"""LA-CMFER + CLIP (the paper's Table 5): LA-CMFER with CLIP's frozen text encoder and its standard
prompts as a third head. The paper gives one sentence ("we enhanced LA-CMFER by adding an extra CLIP
textual encoder with its standard prompts"); the head is ours:

- the class text features ``t_k`` of ``a photo of a {class}.`` from the frozen CLIP text encoder
  (``TRAINER.LACMFERCLIP.CLIP_BACKBONE``, ViT-B/32 by default; its image encoder is not used);
- a projection ``P = Linear(1024, D)`` of the global branch's feature, trained with the network;
- ``z_clip = s cos(P f_g, t_k)`` with CLIP's logit scale ``s``, cross-entropy on the sources with weight
  ``TRAINER.LACMFERCLIP.CLIP_WEIGHT`` (1), added to LA-CMFER's loss;
- inference ``softmax((z_g + z_l + z_clip) / 3)``, unseen score ``1 - max``.
Everything else is LA-CMFER's (:mod:`trainers.lacmfer`).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.config import register_config_hook
from engine.optim import build_lr_scheduler, build_optimizer
from engine.trainer import TRAINER_REGISTRY, CLIPTrainer
from trainers.lacmfer import LACMFER


@register_config_hook
def add_lacmfer_clip_config(cfg) -> None:
    cfg.TRAINER.LACMFERCLIP = CN()
    cfg.TRAINER.LACMFERCLIP.CLIP_BACKBONE = "ViT-B/32"  # a CLIP name or weights file, as MODEL.BACKBONE.NAME
    cfg.TRAINER.LACMFERCLIP.TEMPLATE = "a photo of a {}."
    cfg.TRAINER.LACMFERCLIP.CLIP_WEIGHT = 1.0  # weight of the CLIP head's source cross-entropy


class LACMFERCLIPNet(nn.Module):
    """LA-CMFER + CLIP's trained parts in one module: LA-CMFER's network (as called: compiled under MODEL.COMPILE)
    and the projection ``P``. ``forward`` is :meth:`LACMFERNet.forward`'s, each batch's outputs with ``p_clip``,
    ``P f_g`` (in fp32, outside autocast: the head on CLIP's text features keeps full precision)."""

    def __init__(self, network: nn.Module, clip_head: nn.Linear) -> None:
        super().__init__()
        self.network = network
        self.clip_head = clip_head

    def forward(self, *batches: torch.Tensor) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], ...]:
        outputs = self.network(*batches)
        single = not isinstance(outputs, tuple)
        with_clip = []
        for out in (outputs,) if single else outputs:
            with torch.autocast(device_type=out["f_g"].device.type, enabled=False):
                with_clip.append({**out, "p_clip": self.clip_head(out["f_g"].float())})
        return with_clip[0] if single else tuple(with_clip)


@TRAINER_REGISTRY.register()
class LACMFERCLIP(LACMFER, CLIPTrainer):
    """LA-CMFER with a head on CLIP's text features of the seen classes (see module docstring)."""

    def build_net(self) -> nn.Module:
        cfg, c = self.cfg, self.cfg.TRAINER.LACMFERCLIP
        clip_model = self.load_clip(c.CLIP_BACKBONE, image_encoder=False)  # sets self.logit_scale
        self.class_text_features = self.fixed_text_features(clip_model, [c.TEMPLATE])
        self.clip_head = nn.Linear(self.model.feature_dim, self.class_text_features.shape[1]).to(self.device)
        # its own optimiser with LA-CMFER's settings: registered apart, so LA-CMFER's checkpoint keys stay its own
        self.clip_optim = build_optimizer(self.clip_head, cfg.OPTIM)
        self.clip_sched = build_lr_scheduler(self.clip_optim, cfg.OPTIM)
        self.register_model("clip_head", self.clip_head, self.clip_optim, self.clip_sched)
        return LACMFERCLIPNet(super().build_net(), self.clip_head)

    def clip_logits(self, projected: torch.Tensor) -> torch.Tensor:
        """``z_clip = s cos(P f_g, t_k)`` from ``P f_g`` (the outputs' ``p_clip``)."""
        return self.logit_scale * F.normalize(projected, dim=-1) @ self.class_text_features.t()

    def step_losses(self, out_s: dict[str, torch.Tensor], out_t: dict[str, torch.Tensor],
                    labels_s: torch.Tensor) -> dict[str, torch.Tensor]:
        losses = super().step_losses(out_s, out_t, labels_s)
        clip_ce = F.cross_entropy(self.clip_logits(out_s["p_clip"]), labels_s)
        losses["loss"] = losses["loss"] + self.cfg.TRAINER.LACMFERCLIP.CLIP_WEIGHT * clip_ce
        losses["loss_clip"] = clip_ce
        return losses

    def class_logits(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(z_g + z_l + z_clip) / 3``."""
        return (out["z_g"] + out["z_l"] + self.clip_logits(out["p_clip"])) / 3
