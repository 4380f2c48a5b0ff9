"""Building blocks of the cross-domain FER methods (LA-CMFER, DUML), each written once.

- :class:`CBAM`: channel attention, then spatial attention, with a residual of its own (Woo et al., ECCV
  2018, as the ``CBAMBlock`` those methods import): ``x + (x * Mc(x)) * Ms(x * Mc(x))``, where ``Mc`` is a
  sigmoid over a shared two-layer 1x1-convolution MLP (reduction 16) of the average- and max-pooled map,
  and ``Ms`` a sigmoid of one convolution (kernel 49, padding 24) over the channel-wise max and mean.
- :class:`AttentionBlock`: a ResNet basic block whose second batch-norm output goes through CBAM before the
  shortcut is added; :func:`attention_stage` stacks them as torchvision stacks its blocks.
- :func:`quadrants`: the four quadrants of a feature map (top-left, top-right, bottom-left, bottom-right);
  :class:`QuadrantBranches`: attention blocks on each quadrant, pooled and concatenated (the local branch of
  LA-CMFER, the fusion branch of DUML).
- :class:`GradientReversal`: identity forward, ``-alpha`` times the gradient backward (Ganin & Lempitsky).
- :class:`ArcFace`: additive angular margin logits ``s cos(theta_y + m)`` (Deng et al., CVPR 2019).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class CBAM(nn.Module):
    """Convolutional block attention with its own residual (see module docstring)."""

    def __init__(self, channels: int, reduction: int = 16, kernel_size: int = 49) -> None:
        super().__init__()
        hidden = max(1, channels // reduction)
        self.mlp = nn.Sequential(nn.Conv2d(channels, hidden, 1, bias=False), nn.ReLU(inplace=True),
                                 nn.Conv2d(hidden, channels, 1, bias=False))
        self.spatial = nn.Conv2d(2, 1, kernel_size, padding=kernel_size // 2)

    def channel_attention(self, x: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.mlp(F.adaptive_max_pool2d(x, 1)) + self.mlp(F.adaptive_avg_pool2d(x, 1)))

    def spatial_attention(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([x.amax(dim=1, keepdim=True), x.mean(dim=1, keepdim=True)], dim=1)
        return torch.sigmoid(self.spatial(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x * self.channel_attention(x)
        return x + out * self.spatial_attention(out)


class AttentionBlock(nn.Module):
    """ResNet basic block (two 3x3 convolutions) with CBAM on the residual branch."""

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.cbam = CBAM(planes)
        self.downsample = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(nn.Conv2d(inplanes, planes, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(planes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.cbam(self.bn2(self.conv2(out)))
        shortcut = x if self.downsample is None else self.downsample(x)
        return F.relu(out + shortcut, inplace=True)


def attention_stage(inplanes: int, planes: int, blocks: int, stride: int = 1) -> nn.Sequential:
    """``blocks`` attention blocks to ``planes`` channels, the first one striding."""
    return nn.Sequential(AttentionBlock(inplanes, planes, stride),
                         *[AttentionBlock(planes, planes) for _ in range(1, blocks)])


def quadrants(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The four quadrants of ``(N, C, H, W)``: top-left, top-right, bottom-left, bottom-right (an odd side
    gives the extra row or column to the bottom or right quadrants)."""
    h, w = x.shape[-2] // 2, x.shape[-1] // 2
    return x[..., :h, :w], x[..., :h, w:], x[..., h:, :w], x[..., h:, w:]


class QuadrantBranches(nn.Module):
    """Each quadrant of a ``(N, inplanes, H, W)`` map through ``blocks`` attention blocks to ``planes``
    channels (the first striding by 2), average-pooled; the four vectors concatenated: ``(N, 4 * planes)``.

    Quadrant ``q`` (top-left, top-right, bottom-left, bottom-right) goes through branch ``q mod branches``.
    ``branches=2`` is the released code of DUML and LA-CMFER: the two left quadrants share one branch and the
    two right ones another (the code defines four and uses two); ``branches=4`` gives each quadrant its own.
    """

    def __init__(self, inplanes: int, planes: int, blocks: int = 2, branches: int = 2) -> None:
        super().__init__()
        if branches not in (1, 2, 4):
            raise ValueError(f"branches must be 1, 2 or 4, got {branches}")
        self.branches = nn.ModuleList(attention_stage(inplanes, planes, blocks, stride=2) for _ in range(branches))
        self.out_features = 4 * planes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n = len(self.branches)
        return torch.cat([F.adaptive_avg_pool2d(self.branches[q % n](part), 1).flatten(1)
                          for q, part in enumerate(quadrants(x))], dim=1)


class _ReverseGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor, alpha: float) -> torch.Tensor:
        ctx.alpha = alpha
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        return -ctx.alpha * grad, None


class GradientReversal(nn.Module):
    """Identity forward; the gradient times ``-alpha`` backward. Set :attr:`alpha` as training proceeds."""

    def __init__(self, alpha: float = 1.0) -> None:
        super().__init__()
        self.alpha = alpha

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ReverseGradient.apply(x, self.alpha)


class ArcFace(nn.Module):
    """A cosine classifier with ArcFace's additive angular margin on the true class.

    ``forward(features)`` gives ``s * cos(theta_k)`` (inference logits); ``forward(features, labels)`` gives
    the training logits, where the true class's ``cos(theta_y)`` becomes ``cos(theta_y + m)`` (past
    ``theta_y > pi - m``, where that is no longer monotone, ``cos(theta_y) - m sin(m)``, as the original).
    Cross-entropy of these logits is the ArcFace loss; with ``m = 0`` it is the cross-entropy of ``s cos``.
    """

    def __init__(self, in_features: int, num_classes: int, s: float = 30.0, m: float = 0.5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.xavier_uniform_(self.weight)
        self.s, self.m = s, m

    def forward(self, features: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
        cosine = F.linear(F.normalize(features), F.normalize(self.weight))
        if labels is None:
            return self.s * cosine
        sine = torch.sqrt((1.0 - cosine.pow(2)).clamp_min(0))
        margin = cosine * math.cos(self.m) - sine * math.sin(self.m)
        margin = torch.where(cosine > math.cos(math.pi - self.m), margin, cosine - math.sin(math.pi - self.m) * self.m)
        true_class = F.one_hot(labels, cosine.shape[1]).bool()
        return self.s * torch.where(true_class, margin, cosine)
