"""OS-FER (Zhang et al., "Open-Set Facial Expression Recognition", AAAI 2024) as a comparison method for
MO-FER: open-set recognition as noisy-label detection. Re-implemented from its released code
(github.com/zyh-uaiaaaa/Open-Set-FER: ``close_set_training.py``, ``predict_pseudo_labels.ipynb``,
``open_set_detection_test.ipynb``, ``resnet.py``); equations in :mod:`trainers.osfer_losses`.

Three stages in one run of ``OPTIM.MAX_EPOCH + TRAINER.OSFER.DETECTOR.MAX_EPOCH`` epochs:

- **A, closed-set model** (the first ``OPTIM.MAX_EPOCH`` epochs; 60 in the original): a ResNet-18 from
  MS-Celeb-1M weights (``MODEL.BACKBONE.WEIGHTS``: the original's ``resnet18_msceleb.pth``, loaded strictly
  where the original's ``strict=False`` loads nothing when the keys differ), global average pooling and a
  ``Linear(512, K)``, trained with cross-entropy on the seen classes of every source (``OPTIM``: Adam 1e-3, weight
  decay 1e-4, ExponentialLR 0.9 per epoch, batch 512). Its softmax gives the reported predictions (ACC-S).
- **B, pseudo-labels**, once, when stage A's last epoch ends (before its checkpoint): ``y^ = argmax f_A(x)`` for
  every image of the *pool*, with the test transform, kept in the detector's buffer ``pseudo_labels`` and so
  saved in every checkpoint from then on: a run killed during stage C resumes there with the same pseudo-labels
  (they are never recomputed once set). ``TRAINER.OSFER.POOL``: ``train`` (default, ours) the target's unlabelled
  training images, so that no test image is seen in training; ``test`` the original's transductive pool, the
  test images themselves.
- **C, detector** (``TRAINER.OSFER.DETECTOR``; 30 epochs in the original): a ResNet-50 from VGGFace2 weights
  (``DETECTOR.WEIGHTS``: ``resnet50_ft_weight.pkl``, a pickle of numpy arrays, loaded strictly) with a new
  ``Linear(2048, K)``, trained on the pool with ``CE(f_C(x), y^) + 6 MSE(M(x), Flip(M(flip x)))`` (EAC's flip
  attention consistency: the class activation maps of an image and of its mirror image must mirror each
  other, which keeps the detector from memorising wrong pseudo-labels). Adam 1e-4, weight decay 1e-4,
  ExponentialLR 0.9, batch 128.

Unseen score (:attr:`OSFER.UNSEEN_SCORE` ``neg_detector_ce``): the knownness ``-CE(f_C(x), y^) = log p_C(y^|x)``
with ``y^ = argmax f_A(x)``, the image's pseudo-label (for a pool image the one stage B stored, since the same
model and transform give it; for an image outside the pool the closed-set model's prediction, computed in the
same way). AUC-U, the DAML grid and the other ranking metrics are computed on it.

Augmentation, as the original's: stage A ``flip_or_noise`` (with probability 0.5 a horizontal flip or Gaussian
noise of variance 30 grey levels^2, std sqrt(30)/255 on [0, 1]), resize to 224 x 224, ImageNet normalisation,
``random_erasing`` (p 0.5, scale 0.02-0.25); stage C (``DETECTOR.TRANSFORMS``) the noise alone with probability
0.5 (``INPUT.GN_P``), normalisation and erasing; the mirror image of stage C is the augmented image flipped.
Both networks are the original's ResNet, Caffe's (``TRAINER.OSFER.STYLE caffe``, :mod:`engine.modeling.resnet`).

Ours, where the code cannot be followed or does not say:
- the knownness is computed with the test transform (the original scores the pool with its training-time
  augmentation, random erasing and noise included);
- the pool switch above (the original is transductive only);
- the last epoch of each stage is kept (the original's stage A also keeps its last epoch; its printed best test
  accuracy is not used);
- both stages' schedulers are ``OPTIM.LR_SCHEDULER`` with ``OPTIM.GAMMA`` (ExponentialLR(0.9) is ``single_step``
  with step 1 and gamma 0.9), each stepped only during its own stage;
- left out, as in the released code: the paper's two co-trained detectors that choose clean samples for each
  other, and its ensemble over a cyclical learning rate (neither is in the code, nor are their settings given).

Under torchrun (the README's "same step on many GPUs"): a step of stage A calls :class:`ClosedSetNet`, a step of
stage C :class:`DetectorNet`, once, each through its own ``data_parallel``. No loss couples samples: the
cross-entropies are means over images and the consistency loss a mean over images of equal-sized maps, so each
rank's mean over its equal share, whose gradients DDP averages, is the one-process gradient (no ``gather_rows``;
the logged losses are each rank's share's). The batch norms are synced, and stay separate for the image and its
mirror: the detector's two passes are two synced calls, each normalising with its own global batch's statistics.
Stage B labels each rank's share of the pool and gathers every rank's labels by pool index, so every rank holds
the whole ``pseudo_labels`` buffer and reads a pool image's label by the index its sampler dealt it.
Checked against one process (tests/test_distributed.py): stage A's step and stage C's (its detector a ResNet-18 there:
the tiny ResNet-50's gradient at the test's batch has ReLU inputs within 1e-5 of zero, where rounding alone, in one
process, moves it by several %).
"""
from __future__ import annotations

import logging

import torch
import torch.nn as nn
import torch.nn.functional as F
from yacs.config import CfgNode as CN

from engine.config import register_config_hook
from engine.data.data_manager import build_data_loader
from engine.data.transforms import build_transform
from engine.evaluation import OpenSetPrediction
from engine.modeling.resnet import STYLES, ResNetTrunk, build_resnet_trunk, resnet_trunk
from engine.optim import build_lr_scheduler, build_optimizer
from engine.trainer import TRAINER_REGISTRY, TrainerXU
from engine.utils import distributed
from engine.utils.errors import UserError
from engine.utils.tools import compiled
from trainers import osfer_losses as L

logger = logging.getLogger(__name__)

CLOSED_SET, DETECTOR = "closed_set", "detector"  # the stages that train, and the models they train
POOLS = {"train": "train_u", "test": "test"}  # TRAINER.OSFER.POOL -> the dataset split it names


@register_config_hook
def add_osfer_config(cfg) -> None:
    cfg.TRAINER.OSFER = CN()
    c = cfg.TRAINER.OSFER
    c.POOL = "train"  # the detector's images: "train" (the target's unlabelled training images) or "test"
    c.STYLE = "caffe"  # both ResNets: the original's (Caffe's) or "torchvision"
    c.CONSISTENCY_WEIGHT = 6.0  # lambda of the flip attention-consistency term (--lam 6)
    c.DETECTOR = CN()  # stage C; stage A is MODEL.BACKBONE, OPTIM and DATALOADER.TRAIN_X
    d = c.DETECTOR
    d.NAME = "resnet50"
    d.WEIGHTS = ""  # a local file: resnet50_ft_weight.pkl (VGGFace2); "" = random weights
    d.WIDTH = 64
    d.MAX_EPOCH = 30
    d.LR = 1e-4
    d.WEIGHT_DECAY = 1e-4
    d.BATCH_SIZE = 128
    d.TRANSFORMS = ("gaussian_noise", "normalize", "random_erasing")  # INPUT.TRANSFORMS of stage C


def detector_data_cfg(cfg):
    """``cfg`` with stage C's training transforms (``TRAINER.OSFER.DETECTOR.TRANSFORMS``) as ``INPUT.TRANSFORMS``."""
    out = cfg.clone()
    out.defrost()
    out.INPUT.TRANSFORMS = list(cfg.TRAINER.OSFER.DETECTOR.TRANSFORMS)
    out.freeze()
    return out


def detector_optim_cfg(cfg):
    """``cfg.OPTIM`` with stage C's learning rate, weight decay and epochs."""
    d, out = cfg.TRAINER.OSFER.DETECTOR, cfg.OPTIM.clone()
    out.defrost()
    out.LR, out.WEIGHT_DECAY, out.MAX_EPOCH = float(d.LR), float(d.WEIGHT_DECAY), int(d.MAX_EPOCH)
    out.freeze()
    return out


class ClosedSetNet(nn.Module):
    """Stage A: a ResNet trunk, global average pooling (the original's ``AvgPool2d(7)`` at 224 px), a linear
    head over the seen classes."""

    def __init__(self, trunk: ResNetTrunk, num_classes: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Linear(trunk.out_channels, num_classes)

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.trunk(images).mean(dim=(2, 3))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(images))


class DetectorNet(nn.Module):
    """Stage C: a ResNet trunk, global average pooling and a linear head, with the class activation maps of the
    head on the last feature map; holds the pool's pseudo-labels (a buffer, -1 until stage B sets them)."""

    def __init__(self, trunk: ResNetTrunk, num_classes: int, pool_size: int) -> None:
        super().__init__()
        self.trunk = trunk
        self.fc = nn.Linear(trunk.out_channels, num_classes)
        self.register_buffer("pseudo_labels", torch.full((pool_size,), -1, dtype=torch.long))

    def logits_and_maps(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        feature_maps = self.trunk(images)
        return self.fc(feature_maps.mean(dim=(2, 3))), L.class_activation_maps(feature_maps, self.fc.weight)

    def forward(self, images: torch.Tensor, mirrored: bool = True) -> dict[str, torch.Tensor]:
        """``logits`` of ``images``; with ``mirrored`` also their class activation ``maps`` and the maps of the
        mirror images, ``maps_of_mirror``, from a second pass (its own batch-norm statistics, as the original's)."""
        logits, maps = self.logits_and_maps(images)
        if not mirrored:
            return {"logits": logits}
        _, maps_of_mirror = self.logits_and_maps(images.flip(-1))
        return {"logits": logits, "maps": maps, "maps_of_mirror": maps_of_mirror}


class OSFERNet(nn.Module):
    """OS-FER's two networks, one per training stage; each is registered with its own optimiser and scheduler
    (checkpoint folders ``closed_set/`` and ``detector/``)."""

    def __init__(self, closed_set: ClosedSetNet, detector: DetectorNet) -> None:
        super().__init__()
        self.closed_set = closed_set
        self.detector = detector


@TRAINER_REGISTRY.register()
class OSFER(TrainerXU):
    """OS-FER on MO-FER (see module docstring)."""

    UNSEEN_SCORE = "neg_detector_ce"

    def check_cfg(self, cfg) -> None:
        super().check_cfg(cfg)
        c = cfg.TRAINER.OSFER
        if c.POOL not in POOLS:
            raise UserError(f"TRAINER.OSFER.POOL must be {' or '.join(POOLS)}, got '{c.POOL}'")
        if c.STYLE not in STYLES:
            raise UserError(f"TRAINER.OSFER.STYLE must be {' or '.join(STYLES)}, got '{c.STYLE}'")
        if c.CONSISTENCY_WEIGHT < 0:
            raise UserError(f"TRAINER.OSFER.CONSISTENCY_WEIGHT must be >= 0, got {c.CONSISTENCY_WEIGHT}")
        if cfg.OPTIM.MAX_EPOCH < 0 or c.DETECTOR.MAX_EPOCH < 0:
            raise UserError(f"OPTIM.MAX_EPOCH (stage A) and TRAINER.OSFER.DETECTOR.MAX_EPOCH (stage C) must be >= 0, "
                            f"got {cfg.OPTIM.MAX_EPOCH} and {c.DETECTOR.MAX_EPOCH}")
        if c.DETECTOR.BATCH_SIZE < 1:
            raise UserError(f"TRAINER.OSFER.DETECTOR.BATCH_SIZE must be >= 1, got {c.DETECTOR.BATCH_SIZE}")

    def build_data_loader(self) -> None:
        """The engine's loaders, then the pool's: ``train_loader_u`` is the pool with stage C's transforms and
        batch size (the unlabelled target training images, or the test images), ``pool_loader`` the pool in
        order with the test transform (stage B)."""
        super().build_data_loader()
        cfg, c = self.cfg, self.cfg.TRAINER.OSFER
        dataset = self.dm.dataset
        if self.train_loader_x is None:
            raise UserError("OS-FER trains its closed-set model on labelled source images, but the sources have none")
        split = POOLS[c.POOL]
        self.pool = dataset.train_u if split == "train_u" else dataset.test
        if not self.pool:
            raise UserError(f"OS-FER's pool (TRAINER.OSFER.POOL {c.POOL}) is the target's "
                            f"{'unlabelled training' if split == 'train_u' else 'test'} images, but there are none; "
                            f"set TRAINER.OSFER.POOL {'test' if split == 'train_u' else 'train'}")
        groups = getattr(dataset, "cache_groups", lambda split: None)
        data_cfg = detector_data_cfg(cfg)
        seed = cfg.SEED + 1 if cfg.SEED >= 0 else cfg.SEED  # the engine's train_u seed
        self.train_loader_u = build_data_loader(
            data_cfg, "RandomSampler", self.pool, c.DETECTOR.BATCH_SIZE, tfm=build_transform(data_cfg, is_train=True),
            is_train=True, seed=seed, split=split, cache_groups=groups(split))
        if split == "test":
            self.pool_loader = self.test_loader
        else:
            self.pool_loader = build_data_loader(cfg, "SequentialSampler", self.pool, cfg.DATALOADER.TEST.BATCH_SIZE,
                                                 tfm=self.dm.tfm_test, is_train=False, seed=cfg.SEED, split=split,
                                                 cache_groups=groups(split))

    def build_model(self) -> None:
        cfg, c = self.cfg, self.cfg.TRAINER.OSFER
        d = c.DETECTOR
        closed_set = ClosedSetNet(build_resnet_trunk(cfg, style=c.STYLE), self.num_classes)
        detector_trunk = resnet_trunk(d.NAME, d.WEIGHTS, int(d.WIDTH), style=c.STYLE, key="TRAINER.OSFER.DETECTOR")
        detector = DetectorNet(detector_trunk, self.num_classes, len(self.pool))
        self.model = OSFERNet(closed_set, detector).to(self.device)
        # registered and saved as the modules themselves: plain checkpoint keys
        self.closed_set_net = compiled(self.model.closed_set, cfg)
        self.detector_net = compiled(self.model.detector, cfg)
        self.detector_loss = compiled(L.detector_loss, cfg)
        # what a step of each stage calls (inference calls the networks themselves, outside DistributedDataParallel)
        self.closed_set_step = distributed.data_parallel(self.closed_set_net, self.device)
        self.detector_step = distributed.data_parallel(self.detector_net, self.device)
        optim_a = build_optimizer(self.model.closed_set, cfg.OPTIM)
        optim_cfg_c = detector_optim_cfg(cfg)
        optim_c = build_optimizer(self.model.detector, optim_cfg_c)
        self.register_model(CLOSED_SET, self.model.closed_set, optim_a, build_lr_scheduler(optim_a, cfg.OPTIM))
        self.register_model(DETECTOR, self.model.detector, optim_c, build_lr_scheduler(optim_c, optim_cfg_c))
        self.closed_set_epochs = int(cfg.OPTIM.MAX_EPOCH)
        self.max_epoch = self.closed_set_epochs + int(d.MAX_EPOCH)

    def run_signature(self) -> dict:
        return {**super().run_signature(), "pool": self.cfg.TRAINER.OSFER.POOL}

    @property
    def stage(self) -> str:
        """The model the current epoch trains: :data:`CLOSED_SET` (stage A) or :data:`DETECTOR` (stage C)."""
        return CLOSED_SET if self.epoch < self.closed_set_epochs else DETECTOR

    # ------------------------------------------------------------------------------------------- the loop
    def before_epoch(self) -> None:
        # without a stage A (OPTIM.MAX_EPOCH 0) the detector's first epoch labels the pool
        if self.stage == DETECTOR and not bool((self.model.detector.pseudo_labels >= 0).all()):
            self.assign_pseudo_labels()

    def after_epoch(self) -> None:
        if self.epoch + 1 == self.closed_set_epochs:  # stage A ends: label the pool before the checkpoint is written
            self.assign_pseudo_labels()
        super().after_epoch()

    def run_epoch(self) -> None:
        """Stage A's epochs pass over the sources, stage C's over the pool; each loader keeps its place."""
        cursors = self._new_cursors()
        if self.stage == CLOSED_SET:
            batches, next_batch = len(self.train_loader_x), lambda: (cursors["train_x"].next(), None)
        else:
            batches, next_batch = len(self.train_loader_u), lambda: (None, cursors["train_u"].next())
        self._run_batches(batches, next_batch, self.forward_backward)

    def update_lr(self, names: str | list[str] | None = None) -> None:
        """Step the current stage's scheduler only (the other stage's learning rate waits)."""
        super().update_lr(self.stage if names is None else names)

    def get_current_lr(self, names: str | list[str] | None = None) -> float:
        return super().get_current_lr(self.stage if names is None else names)

    def forward_backward(self, batch_x: dict | None, batch_u: dict | None) -> dict[str, torch.Tensor]:
        """One step of the current stage: A on the source batch ``batch_x``, C on the pool batch ``batch_u``
        (the other one is not used and may be None)."""
        if self.stage == CLOSED_SET:
            images, labels = self.to_device(batch_x["img"]), self.to_device(batch_x["label"])
            with self.autocast():
                logits = self.closed_set_step(images)
            loss = L.closed_set_loss(logits.float(), labels)
            self.model_backward_and_update(loss, CLOSED_SET)
            return {"loss": loss.detach()}
        images, index = self.to_device(batch_u["img"]), self.to_device(batch_u["index"])
        pseudo_labels = self.model.detector.pseudo_labels[index]
        with self.autocast():
            out = self.detector_step(images)
        losses = self.detector_loss(out["logits"].float(), out["maps"].float(), out["maps_of_mirror"].float(),
                                 pseudo_labels, self.cfg.TRAINER.OSFER.CONSISTENCY_WEIGHT)
        self.model_backward_and_update(losses["loss"], DETECTOR)
        return {name: value.detach() for name, value in losses.items()}

    @torch.no_grad()
    def assign_pseudo_labels(self) -> None:
        """Stage B: ``y^ = argmax f_A(x)`` of every pool image (test transform, eval mode) into the detector's
        ``pseudo_labels`` buffer."""
        net = self.model.closed_set
        training = net.training
        net.eval()
        indices, labels = [], []
        for batch in self.pool_loader:
            with self.autocast():
                logits = self.closed_set_net(self.to_device(batch["img"]))
            indices.append(self.to_device(batch["index"]))
            labels.append(logits.float().argmax(dim=-1))
        net.train(training)
        # under torchrun each rank labelled its share of the pool
        index = distributed.all_gather_cat(torch.cat(indices))
        label = distributed.all_gather_cat(torch.cat(labels))
        pseudo_labels = self.model.detector.pseudo_labels
        pseudo_labels.fill_(-1)
        pseudo_labels[index] = label
        counts = torch.bincount(pseudo_labels.clamp(min=0), minlength=self.num_classes).tolist()
        logger.info("Stage B: pseudo-labels of the %d pool images (TRAINER.OSFER.POOL %s) per class: %s",
                    len(pseudo_labels), self.cfg.TRAINER.OSFER.POOL,
                    ", ".join(f"{self.lab2cname[k]} {n}" for k, n in enumerate(counts)))

    # ------------------------------------------------------------------------------------------ inference
    @torch.no_grad()
    def model_inference(self, images: torch.Tensor) -> OpenSetPrediction:
        """Stage A's softmax (the prediction) and the detector's knownness ``-CE(f_C(x), argmax f_A(x))``."""
        with self.autocast():
            closed_logits = self.closed_set_net(images)
            detector_logits = self.detector_net(images, mirrored=False)["logits"]
        probs = closed_logits.float().softmax(dim=-1)
        return OpenSetPrediction(probs, L.knownness(detector_logits.float(), probs.argmax(dim=-1)))

    @torch.no_grad()
    def image_features(self, images: torch.Tensor) -> torch.Tensor:
        """The closed-set model's pooled features (what its classifier sees), L2-normalised."""
        with self.autocast():
            features = self.model.closed_set.features(images)
        return F.normalize(features.float(), dim=-1)
