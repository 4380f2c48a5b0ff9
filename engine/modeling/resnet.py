"""torchvision's ResNets for the methods that are not built on CLIP, cut where a method cuts them and
initialised from a local weights file.

``MODEL.BACKBONE.NAME`` names the architecture (``resnet18``, ``resnet34``, ``resnet50``) and
``MODEL.BACKBONE.WEIGHTS`` a weights file: a torchvision state dict (``resnet18-5c106cde.pth``...), or a
dict holding one under ``state_dict`` (the MS-Celeb ResNet-18 of OS-FER). Nothing is downloaded. The load is
strict for the part a method keeps: a missing tensor, one of another shape, or a tensor this architecture
does not have is an error naming the file and the first keys; the tensors of the parts a method cuts away
(``layer3``, ``layer4`` and ``fc`` of a trunk cut after ``layer2``) are left out, and the log says how many.
Without a file the trunk starts from random weights, announced in one log line.

``MODEL.BACKBONE.WIDTH`` is the width of the first stage (torchvision: 64; the later stages double it as
torchvision's do). Weights files fit width 64 only; a smaller width makes a ResNet small enough for CPU
tests and demos (``configs/trainers/*/tiny.yaml``), and methods scale their own branches by
:func:`width_scale`.
"""
from __future__ import annotations

import logging
import os

import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from engine.utils.errors import UserError

logger = logging.getLogger(__name__)

# torchvision's depths: block type and blocks per stage
ARCHITECTURES = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
                 "resnet50": (Bottleneck, (3, 4, 6, 3))}
STAGES = ("layer1", "layer2", "layer3", "layer4")
TORCHVISION_WIDTH = 64
# How many keys an error message quotes
N_QUOTED = 3


def width_scale(cfg) -> float:
    """``MODEL.BACKBONE.WIDTH`` relative to torchvision's 64: methods multiply their own channel counts by it."""
    return cfg.MODEL.BACKBONE.WIDTH / TORCHVISION_WIDTH


def scaled(channels: int, scale: float) -> int:
    """``channels * scale``, at least 8 (CBAM's channel attention divides by 16 then needs one channel left)."""
    return max(8, int(round(channels * scale)))


class ResNetTrunk(nn.Module):
    """A torchvision ResNet up to and including stage ``upto``: ``conv1, bn1, relu, maxpool, layer1..``.

    Module and parameter names are torchvision's, so a torchvision state dict loads into it. ``forward``
    returns the feature map of the last stage kept; :attr:`out_channels` is its channel count.
    """

    def __init__(self, arch: str = "resnet18", upto: str = "layer4", width: int = TORCHVISION_WIDTH) -> None:
        super().__init__()
        if arch not in ARCHITECTURES:
            raise UserError(f"unknown ResNet '{arch}' (MODEL.BACKBONE.NAME); choose from {', '.join(ARCHITECTURES)}")
        if upto not in STAGES:
            raise ValueError(f"upto must be one of {STAGES}, got {upto}")
        block, layers = ARCHITECTURES[arch]
        self.arch, self.upto = arch, upto
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for k, name in enumerate(STAGES[: STAGES.index(upto) + 1]):
            planes = width * 2 ** k
            stage, inplanes = _stage(block, inplanes, planes, layers[k], stride=1 if k == 0 else 2)
            self.add_module(name, stage)
        self.out_channels = inplanes
        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.constant_(m.weight, 1)
                nn.init.constant_(m.bias, 0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        for name in STAGES[: STAGES.index(self.upto) + 1]:
            x = getattr(self, name)(x)
        return x


def _stage(block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    """torchvision's ``_make_layer``: ``blocks`` blocks, the first one striding and projecting."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out))
    stage = [block(inplanes, planes, stride, downsample)]
    stage += [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*stage), out


def load_weights_file(path: str) -> dict[str, torch.Tensor]:
    """The state dict in ``path`` (tensors only: ``weights_only`` loading); a dict holding it under
    ``state_dict`` is unwrapped. A missing or unreadable file is a :class:`UserError`."""
    if not os.path.isfile(path):
        raise UserError(f"backbone weights file not found: {path} (MODEL.BACKBONE.WEIGHTS)")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a damaged or foreign file raises many types; all mean the same to a user
        raise UserError(f"cannot read backbone weights {path}: {type(e).__name__}: "
                        f"{' '.join(str(e).split())[:160]}") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise UserError(f"backbone weights {path} hold no state dict of tensors")
    return state


def load_trunk_weights(trunk: ResNetTrunk, path: str) -> None:
    """Load a torchvision state dict into ``trunk`` strictly for the stages it keeps (see module docstring)."""
    state = load_weights_file(path)
    own = trunk.state_dict()
    cut = tuple(f"{name}." for name in STAGES[STAGES.index(trunk.upto) + 1:]) + ("fc.",)
    left_out = [k for k in state if k.startswith(cut)]
    unexpected = [k for k in state if k not in own and not k.startswith(cut)]
    # checkpoints older than BatchNorm's counter lack num_batches_tracked; BatchNorm fills it in
    missing = [k for k in own if k not in state and not k.endswith("num_batches_tracked")]
    wrong = [f"{k} {tuple(state[k].shape)} (expected {tuple(v.shape)})" for k, v in own.items()
             if k in state and state[k].shape != v.shape]
    problems = [f"{len(keys)} {what} ({_first(keys)})" for what, keys in
                (("missing", missing), ("unexpected", unexpected), ("of another shape", wrong)) if keys]
    if problems:
        raise UserError(f"backbone weights {path} do not fit {trunk.arch} at width {trunk.conv1.out_channels}: "
                        f"{'; '.join(problems)} keys")
    trunk.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    logger.info("Loaded %s weights from %s (%d tensors; %d of the layers cut away left out)", trunk.arch, path,
                len(own) - len([k for k in own if k not in state]), len(left_out))


def _first(keys: list[str]) -> str:
    """The first :data:`N_QUOTED` of ``keys``, with ``...`` when there are more."""
    return ", ".join(keys[:N_QUOTED]) + (", ..." if len(keys) > N_QUOTED else "")


def build_resnet_trunk(cfg, upto: str = "layer4") -> ResNetTrunk:
    """``MODEL.BACKBONE.NAME`` cut after ``upto``, at ``MODEL.BACKBONE.WIDTH``, from ``MODEL.BACKBONE.WEIGHTS``
    (random weights, said in the log, when it is empty)."""
    b = cfg.MODEL.BACKBONE
    trunk = ResNetTrunk(b.NAME, upto, int(b.WIDTH))
    if b.WEIGHTS:
        load_trunk_weights(trunk, b.WEIGHTS)
    else:
        logger.info("%s up to %s starts from random weights (MODEL.BACKBONE.WEIGHTS is empty)", b.NAME, upto)
    return trunk
