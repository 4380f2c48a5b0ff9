"""CoOp (Zhou et al., IJCV 2022): learnable prompt context, frozen CLIP, trained on the seen source
classes; the unseen score is 1 - max softmax (MSP). Config keys follow CoOp's repository
(``TRAINER.COOP.N_CTX, CSC, CTX_INIT, CLASS_TOKEN_POSITION``)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.config import register_config_hook
from engine.modeling.clip_text import PromptLearner, TextEncoder
from engine.optim import build_lr_scheduler, build_optimizer
from engine.trainer import TRAINER_REGISTRY, CLIPTrainer, TrainerX
from engine.utils.tools import compiled


@register_config_hook
def add_coop_config(cfg) -> None:
    cfg.TRAINER.COOP = CN()
    cfg.TRAINER.COOP.N_CTX = 16  # number of context vectors
    cfg.TRAINER.COOP.CSC = False  # class-specific context
    cfg.TRAINER.COOP.CTX_INIT = ""  # initialization words, e.g. "a photo of a" (then N_CTX = their count)
    cfg.TRAINER.COOP.CLASS_TOKEN_POSITION = "end"  # 'middle' or 'end' or 'front'


@TRAINER_REGISTRY.register()
class CoOp(CLIPTrainer, TrainerX):
    """Prompts ``[SOS] ctx_1..ctx_n {class}. [EOS]``; only the context vectors are trained."""

    def build_model(self) -> None:
        cfg, c = self.cfg, self.cfg.TRAINER.COOP
        clip_model = self.load_clip()
        clip_model.requires_grad_(False)
        self.text_encoder = compiled(TextEncoder(clip_model), cfg)
        self.prompt_learner = PromptLearner(clip_model, [f"{n}." for n in self.classnames], n_ctx=c.N_CTX,
                                            class_specific=c.CSC, position=c.CLASS_TOKEN_POSITION,
                                            names=self.classnames, init_words=c.CTX_INIT).to(self.device)
        self.build_clip_network(self.prompt_learner)  # the frozen encoders and the prompts, in one module
        self.optim = build_optimizer(self.prompt_learner, cfg.OPTIM)
        self.sched = build_lr_scheduler(self.optim, cfg.OPTIM)
        self.register_model("prompt_learner", self.prompt_learner, self.optim, self.sched)

    def text_features(self) -> torch.Tensor:
        return self.clip.text_features()

    def forward_backward(self, batch: dict) -> dict[str, torch.Tensor]:
        image, label = self.parse_batch_train(batch)
        # the image encoder is frozen: no graph through it. The cross-entropy is a mean over the batch, coupling no
        # samples: under torchrun each rank's mean over its share, whose gradients DDP averages (no gather).
        features, text_features = self.network(image)
        logits = self.class_logits(features, text_features)
        loss = F.cross_entropy(logits, label)
        self.model_backward_and_update(loss)
        return {"loss": loss.detach(), "acc": (logits.argmax(-1) == label).float().mean() * 100}
