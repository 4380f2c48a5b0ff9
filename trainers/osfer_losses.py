"""OS-FER's equations (Zhang et al., AAAI 2024), one function each, as its released code computes them
(zyh-uaiaaaa/Open-Set-FER: ``close_set_training.py`` for stage A, ``open_set_detection_test.ipynb`` for the
detector, which takes its attention consistency from EAC, Zhang et al., ECCV 2022).

Notation: ``F`` the detector's last feature map ``(N, C, H, W)``, ``W`` and ``b`` its linear head ``(K, C)`` and
``(K,)`` on the spatially averaged map, ``y^`` the pseudo-label a stage-A model gave an image.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def closed_set_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Stage A: ``CE(f_A(x), y)`` on the labelled source images, averaged over the batch."""
    return F.cross_entropy(logits, labels)


def class_activation_maps(feature_maps: torch.Tensor, head_weight: torch.Tensor) -> torch.Tensor:
    """``M_k = sum_c W[k, c] F_c``, ``(N, K, H, W)``: the class activation maps of the head ``W`` (``(K, C)``) on
    ``feature_maps``. ``W`` is detached, as the original builds the maps from a ``requires_grad=False``
    copy of it: the consistency loss trains the features, never the head. Because the head sees the spatial
    mean of ``F``, the spatial mean of ``M_k`` plus ``b_k`` is the logit ``z_k``."""
    return torch.einsum("kc,nchw->nkhw", head_weight.detach(), feature_maps)


def flip_maps(maps: torch.Tensor) -> torch.Tensor:
    """``Flip(M)``: each map mirrored left to right. The original samples the map with ``grid_sample`` on a grid
    whose x is negated (``align_corners=True``, so the sample points are the pixel centres mirrored): the
    same values as reversing the last axis, which this does exactly."""
    return maps.flip(-1)


def attention_consistency_loss(maps: torch.Tensor, maps_of_mirror: torch.Tensor) -> torch.Tensor:
    """``MSE(M(x), Flip(M(flip x)))``, averaged over every image, class and position (``F.mse_loss``): the maps
    of an image should be the mirror of the maps of its mirror image. The mirror image is the augmented image
    flipped (the original erases first, then flips: ``self.clean = True``)."""
    return F.mse_loss(maps, flip_maps(maps_of_mirror))


def detector_loss(logits: torch.Tensor, maps: torch.Tensor, maps_of_mirror: torch.Tensor,
                  pseudo_labels: torch.Tensor, consistency_weight: float) -> dict[str, torch.Tensor]:
    """Stage C: ``L = CE(f_C(x), y^) + lambda MSE(M(x), Flip(M(flip x)))`` with ``lambda = 6`` (``--lam 6``);
    returns ``loss`` and its two terms."""
    ce = F.cross_entropy(logits, pseudo_labels)
    consistency = attention_consistency_loss(maps, maps_of_mirror)
    return {"loss": ce + consistency_weight * consistency, "loss_ce": ce, "loss_consistency": consistency}


def knownness(detector_logits: torch.Tensor, pseudo_labels: torch.Tensor) -> torch.Tensor:
    """``-CE(f_C(x), y^) = log p_C(y^ | x)`` per image: the detector's loss on the pseudo-label, negated so that
    higher means seen. OS-FER takes a large loss as the sign of an unseen class: the detector, trained on
    noisy pseudo-labels with the consistency loss that keeps it from memorising them, does not fit the
    pseudo-labels of unseen-class images, which no seen class explains."""
    return -F.cross_entropy(detector_logits.float(), pseudo_labels, reduction="none")
