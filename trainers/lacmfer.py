"""LA-CMFER (Yang et al., ACM MM 2024): cross-multidomain FER with global and local branches, aligned to
the unlabelled target by sample-weighted MK-MMD, made to agree by MCC and trained on agreed pseudo-labels.
Re-implemented from the released code (YYX-future/LA-CMFER), which does not run as published.

Network (:class:`LACMFERNet`): an ImageNet ResNet-18 up to ``layer2`` (28x28x128 at 224 px), then
- global branch: 6 attention blocks to 256 channels and 3 to 1024, average pool, ``Linear(1024, K)``;
- local branch: the 28x28 map cut into four 14x14 quadrants, each through 2 attention blocks to 256
  channels, pooled and concatenated to 1024, ``Linear(1024, K)``.
An attention block is a ResNet basic block with CBAM (spatial kernel 49) before its shortcut
(:mod:`engine.modeling.blocks`). As in the released code, the two left quadrants share one branch and the
two right ones another (``TRAINER.LACMFER.QUADRANT_BRANCHES 2``; the code defines four and uses two); the source and
the target batch go through the network separately (batch-norm statistics per domain in training).

Losses (:mod:`trainers.lacmfer_losses`): ``LS_g + LS_l + 0.4 (A_g + A_l) + 0.5 MCC + 0.1 L_pl``.
Optimisation: SGD with Nesterov momentum 0.9, weight decay 1e-4, lr 1e-2 (the ResNet stem lr/10), the
inverse-decay schedule ``lr (1 + 10 min(1, t / 10^4))^-0.75`` stepped every step, 128 source + 128 target
images a step. Inference for MO-FER: ``softmax((z_g + z_l) / 2)`` (the released test), unseen score
``1 - max`` (MSP) with DAML's threshold grid.

Ours, where the code and its description are silent or cannot be followed:
- the last epoch is evaluated (the original keeps the best epoch on the target test set, an oracle);
- training runs by epochs, as every method here (the original counts 20,000 steps);
- MCC takes the heads' probabilities by default (the code's raw logits can divide by zero;
  ``TRAINER.LACMFER.MCC_ON_LOGITS True`` restores them);
- ``MODEL.BACKBONE.WIDTH`` below 64 scales every channel count of the branches alike (CPU tests).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.config import register_config_hook
from engine.modeling.blocks import QuadrantBranches, attention_stage
from engine.modeling.mmd import DEFAULT_MULTIPLIERS
from engine.modeling.resnet import build_resnet_trunk, scaled, width_scale
from engine.optim import build_lr_scheduler, build_optimizer
from engine.trainer import TRAINER_REGISTRY, TrainerXU
from engine.utils import distributed
from engine.utils.distributed import gather_rows
from engine.utils.tools import compiled
from trainers import lacmfer_losses as L


@register_config_hook
def add_lacmfer_config(cfg) -> None:
    cfg.TRAINER.LACMFER = CN()
    c = cfg.TRAINER.LACMFER
    c.LABEL_SMOOTHING = 0.1
    c.ALIGN_WEIGHT = 0.4  # weight of A_g + A_l
    c.CLUSTER_WEIGHT = 0.02  # weight of the class-cluster term inside A
    c.MCC_WEIGHT = 0.5
    c.PSEUDO_WEIGHT = 0.1  # weight of L_pl
    c.CONFIDENCE = 0.4  # max softmax from which a sample counts in the alignment weights
    c.PSEUDO_THRESHOLD = 0.9  # agreed pseudo-labels: one head's max softmax above this
    c.MCC_ON_LOGITS = False  # the released code's raw logits instead of probabilities
    c.STEM_LR_MULT = 0.1  # the ResNet stem's learning rate relative to OPTIM.LR
    c.QUADRANT_BRANCHES = 2  # local branch: 2, the left and the right quadrants share a branch (the code), or 4
    c.MMD_MULTIPLIERS = DEFAULT_MULTIPLIERS


class LACMFERNet(nn.Module):
    """ResNet stem, global and local branches, a linear head on each (see module docstring)."""

    def __init__(self, stem: nn.Module, num_classes: int, scale: float = 1.0, quadrant_branches: int = 2) -> None:
        super().__init__()
        c128, c256, c1024 = scaled(128, scale), scaled(256, scale), scaled(1024, scale)
        self.stem = stem
        self.global_branch = nn.Sequential(attention_stage(c128, c256, 6, stride=2),
                                           attention_stage(c256, c1024, 3, stride=2),
                                           nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.local_branch = QuadrantBranches(c128, c256, blocks=2, branches=quadrant_branches)
        self.head_g = nn.Linear(c1024, num_classes)
        self.head_l = nn.Linear(self.local_branch.out_features, num_classes)
        self.feature_dim = c1024

    def forward(self, *batches: torch.Tensor) -> dict[str, torch.Tensor] | tuple[dict[str, torch.Tensor], ...]:
        """Features and logits ``{"f_g", "z_g", "f_l", "z_l"}`` of a batch of images; given several batches (a
        step's source and target batch), one dict per batch, each batch through the network on its own (in
        training, with its own batch-norm statistics, as the original does), in one call."""
        outputs = tuple(self.forward_one(images) for images in batches)
        return outputs[0] if len(outputs) == 1 else outputs

    def forward_one(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.stem(images)
        f_g, f_l = self.global_branch(x), self.local_branch(x)
        return {"f_g": f_g, "z_g": self.head_g(f_g), "f_l": f_l, "z_l": self.head_l(f_l)}


def _float(outputs):
    """Every tensor of an output dict (or of a tuple of them) in fp32."""
    if isinstance(outputs, tuple):
        return tuple(_float(out) for out in outputs)
    return {name: value.float() for name, value in outputs.items()}


@TRAINER_REGISTRY.register()
class LACMFER(TrainerXU):
    """LA-CMFER on MO-FER (see module docstring)."""

    def build_model(self) -> None:
        cfg, c = self.cfg, self.cfg.TRAINER.LACMFER
        stem = build_resnet_trunk(cfg, upto="layer2")
        self.model = LACMFERNet(stem, self.num_classes, width_scale(cfg), int(c.QUADRANT_BRANCHES)).to(self.device)
        self.loss_settings = L.LossSettings(
            label_smoothing=c.LABEL_SMOOTHING, align_weight=c.ALIGN_WEIGHT, cluster_weight=c.CLUSTER_WEIGHT,
            mcc_weight=c.MCC_WEIGHT, pseudo_weight=c.PSEUDO_WEIGHT, confidence=c.CONFIDENCE,
            pseudo_threshold=c.PSEUDO_THRESHOLD, mcc_on_logits=bool(c.MCC_ON_LOGITS),
            mmd_multipliers=tuple(float(m) for m in c.MMD_MULTIPLIERS))
        self.losses = compiled(L.step_losses, cfg)
        stem_ids = {id(p) for p in self.model.stem.parameters()}
        groups = [{"params": list(self.model.stem.parameters()), "lr": cfg.OPTIM.LR * c.STEM_LR_MULT},
                  {"params": [p for p in self.model.parameters() if id(p) not in stem_ids], "lr": cfg.OPTIM.LR}]
        self.optim = build_optimizer(None, cfg.OPTIM, param_groups=groups)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("model", self.model, self.optim, self.sched)
        self.net = self.build_net()
        self.network = distributed.data_parallel(self.net, self.device)

    def build_net(self) -> nn.Module:
        """What the trainer calls, in training and in inference: the network, compiled under MODEL.COMPILE
        (registered and saved as :attr:`model`: plain checkpoint keys). A step calls it through :attr:`network`."""
        return compiled(self.model, self.cfg)

    def outputs(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        """The network's features and logits, under the run's precision; fp32 out."""
        with self.autocast():
            out = self.net(images)
        return _float(out)

    def step_losses(self, out_s: dict[str, torch.Tensor], out_t: dict[str, torch.Tensor],
                    labels_s: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.losses(out_s, out_t, labels_s, self.loss_settings)

    def forward_backward(self, batch_x: dict, batch_u: dict) -> dict[str, torch.Tensor]:
        input_x, label_x, input_u = self.parse_batch_train(batch_x, batch_u)
        with self.autocast():
            out_s, out_t = _float(self.network(input_x, input_u))
        # The weighted MMD, the class-cluster term, MCC and the pseudo-label mean couple the samples: under torchrun
        # every rank computes every term on every rank's rows (the one-process losses of the global batch).
        out_s, out_t = ({name: gather_rows(value) for name, value in out.items()} for out in (out_s, out_t))
        losses = self.step_losses(out_s, out_t, gather_rows(label_x))
        self.model_backward_and_update(losses["loss"])
        return {name: value.detach() for name, value in losses.items()}

    def class_logits(self, out: dict[str, torch.Tensor]) -> torch.Tensor:
        """The averaged heads, ``(z_g + z_l) / 2``."""
        return (out["z_g"] + out["z_l"]) / 2

    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> torch.Tensor:
        return self.class_logits(self.outputs(images)).softmax(-1)

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The global branch's feature, normalised (what the alignment acts on)."""
        return F.normalize(self.outputs(images)["f_g"], dim=-1)
