"""torchvision's ResNets for the methods that are not built on CLIP, cut where a method cuts them and
initialised from a local weights file.

``MODEL.BACKBONE.NAME`` names the architecture (``resnet18``, ``resnet34``, ``resnet50``) and
``MODEL.BACKBONE.WEIGHTS`` a weights file: a torchvision state dict (``resnet18-5c106cde.pth``...), a
dict holding one under ``state_dict`` (the MS-Celeb ResNet-18 of OS-FER), or a pickle of name -> numpy array
(``*.pkl``: the VGGFace2 ResNet-50 ``resnet50_ft_weight.pkl`` of OS-FER, converted from Caffe). Nothing is
downloaded. The load is strict for the part a method keeps: a missing tensor, one of another shape, or a
tensor this architecture does not have is an error naming the file and the first keys; the tensors of the
parts a method cuts away (``layer3``, ``layer4`` and ``fc`` of a trunk cut after ``layer2``) are left out, and
the log says how many. Without a file the trunk starts from random weights, announced in one log line.

Two styles of the same architecture (the same parameters and keys, :data:`STYLES`): ``torchvision``'s, and
``caffe``, the ResNet of the Caffe models (and of OS-FER's ``resnet.py``): the max pool pads nothing and rounds
its output size up, and a Bottleneck strides in its first 1x1 convolution instead of its 3x3 one. Weights
trained in one style compute other features in the other.

``MODEL.BACKBONE.WIDTH`` is the width of the first stage (torchvision: 64; the later stages double it as
torchvision's do). Weights files fit width 64 only; a smaller width makes a ResNet small enough for CPU
tests and demos (``configs/trainers/*/tiny.yaml``), and methods scale their own branches by
:func:`width_scale`.
"""
from __future__ import annotations

import codecs
import collections
import logging
import os
import pickle

import numpy as np
import torch
from torch import nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from engine.modeling.state_dicts import mismatched_keys
from engine.utils.errors import UserError

logger = logging.getLogger(__name__)

# torchvision's depths: block type and blocks per stage
ARCHITECTURES = {"resnet18": (BasicBlock, (2, 2, 2, 2)), "resnet34": (BasicBlock, (3, 4, 6, 3)),
                 "resnet50": (Bottleneck, (3, 4, 6, 3))}
STAGES = ("layer1", "layer2", "layer3", "layer4")
STYLES = ("torchvision", "caffe")
TORCHVISION_WIDTH = 64


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

    def __init__(self, arch: str = "resnet18", upto: str = "layer4", width: int = TORCHVISION_WIDTH,
                 style: str = "torchvision", name_key: str = "MODEL.BACKBONE.NAME") -> None:
        """``style``: one of :data:`STYLES` (module docstring); ``name_key``: the config key an error names."""
        super().__init__()
        if arch not in ARCHITECTURES:
            raise UserError(f"unknown ResNet '{arch}' ({name_key}); choose from {', '.join(ARCHITECTURES)}")
        if upto not in STAGES:
            raise ValueError(f"upto must be one of {STAGES}, got {upto}")
        if style not in STYLES:
            raise ValueError(f"style must be one of {STYLES}, got {style}")
        block, layers = ARCHITECTURES[arch]
        self.arch, self.upto, self.style = arch, upto, style
        self.conv1 = nn.Conv2d(3, width, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        if style == "caffe":
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=0, ceil_mode=True)
        else:
            self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = width
        for k, name in enumerate(STAGES[: STAGES.index(upto) + 1]):
            planes = width * 2 ** k
            stage, inplanes = _stage(block, inplanes, planes, layers[k], stride=1 if k == 0 else 2,
                                     stride_in_1x1=style == "caffe")
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


def _stage(block: type[nn.Module], inplanes: int, planes: int, blocks: int, stride: int,
           stride_in_1x1: bool = False) -> tuple[nn.Sequential, int]:
    """torchvision's ``_make_layer``: ``blocks`` blocks, the first one striding and projecting; with
    ``stride_in_1x1`` a Bottleneck strides in its first 1x1 convolution (Caffe's ResNet)."""
    out = planes * block.expansion
    downsample = None
    if stride != 1 or inplanes != out:
        downsample = nn.Sequential(nn.Conv2d(inplanes, out, kernel_size=1, stride=stride, bias=False),
                                   nn.BatchNorm2d(out))
    first = block(inplanes, planes, stride, downsample)
    if stride_in_1x1 and block is Bottleneck:
        # the same parameters; only where the stride applies moves (a convolution reads it at every call)
        first.conv1.stride, first.conv2.stride = (stride, stride), (1, 1)
    stage = [first] + [block(out, planes) for _ in range(1, blocks)]
    return nn.Sequential(*stage), out


# What a pickle of numpy arrays may build (anything else in a pickle could run code): numpy's array
# reconstruction under its old (numpy < 2) and new module names, the bytes of Python 3 pickles, ordered dicts.
_NUMPY_CORE = getattr(np, "_core", None) or np.core  # numpy >= 2 names it _core
_PICKLE_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _NUMPY_CORE.multiarray._reconstruct,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): codecs.encode,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _ArrayUnpickler(pickle.Unpickler):
    """Unpickles dicts of numpy arrays and nothing that could run code (:data:`_PICKLE_GLOBALS`)."""

    def find_class(self, module: str, name: str):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"it refers to {module}.{name}, not a numpy array") from None


def load_pickled_arrays(path: str, key: str = "MODEL.BACKBONE.WEIGHTS") -> dict[str, torch.Tensor]:
    """The tensors of a pickle of name -> numpy array (Python 2 pickles read with ``encoding='latin1'``, as
    OS-FER reads ``resnet50_ft_weight.pkl``). Nothing but numpy arrays is built; anything else, or a file that
    is not such a pickle, is a :class:`UserError` naming ``path`` and ``key``."""
    try:
        with open(path, "rb") as f:
            state = _ArrayUnpickler(f, encoding="latin1").load()
    except Exception as e:  # a damaged or foreign file raises many types; all mean the same to a user
        raise UserError(f"cannot read backbone weights {path} ({key}) as a pickle of numpy arrays: "
                        f"{type(e).__name__}: {' '.join(str(e).split())[:160]}") from None
    if not isinstance(state, dict) or not state or not all(isinstance(v, np.ndarray) for v in state.values()):
        raise UserError(f"backbone weights {path} ({key}) hold no dict of name -> numpy array")
    return {str(k): torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}


def load_weights_file(path: str, key: str = "MODEL.BACKBONE.WEIGHTS") -> dict[str, torch.Tensor]:
    """The state dict in ``path``: a ``*.pkl`` pickle of numpy arrays (:func:`load_pickled_arrays`), else a
    torch file (tensors only: ``weights_only`` loading) whose dict holding it under ``state_dict`` is
    unwrapped. A missing or unreadable file is a :class:`UserError` naming ``key``, the config key that gave it."""
    if not os.path.isfile(path):
        raise UserError(f"backbone weights file not found: {path} ({key})")
    if path.endswith(".pkl"):
        return load_pickled_arrays(path, key)
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


def load_trunk_weights(trunk: ResNetTrunk, path: str, key: str = "MODEL.BACKBONE.WEIGHTS") -> None:
    """Load a torchvision-named state dict into ``trunk`` strictly for the stages it keeps (see module
    docstring); ``key`` is the config key that named ``path``, quoted in errors."""
    state = load_weights_file(path, key)
    own = trunk.state_dict()
    cut = tuple(f"{name}." for name in STAGES[STAGES.index(trunk.upto) + 1:]) + ("fc.",)
    left_out = [k for k in state if k.startswith(cut)]
    # checkpoints older than BatchNorm's counter lack num_batches_tracked; BatchNorm fills it in
    problems, _ = mismatched_keys(own, state, ignore_unexpected=lambda k: k.startswith(cut),
                                  ignore_missing=lambda k: k.endswith("num_batches_tracked"))
    if problems:
        raise UserError(f"backbone weights {path} ({key}) do not fit {trunk.arch} at width "
                        f"{trunk.conv1.out_channels}: {'; '.join(problems)} keys")
    trunk.load_state_dict({k: v for k, v in state.items() if k in own}, strict=False)
    logger.info("Loaded %s weights from %s (%d tensors; %d of the layers cut away left out)", trunk.arch, path,
                len(own) - len([k for k in own if k not in state]), len(left_out))


def build_resnet_trunk(cfg, upto: str = "layer4", style: str = "torchvision") -> ResNetTrunk:
    """``MODEL.BACKBONE.NAME`` cut after ``upto``, at ``MODEL.BACKBONE.WIDTH``, from ``MODEL.BACKBONE.WEIGHTS``
    (random weights, said in the log, when it is empty)."""
    b = cfg.MODEL.BACKBONE
    return resnet_trunk(b.NAME, b.WEIGHTS, int(b.WIDTH), upto, style)


def resnet_trunk(arch: str, weights: str, width: int = TORCHVISION_WIDTH, upto: str = "layer4",
                 style: str = "torchvision", key: str = "MODEL.BACKBONE") -> ResNetTrunk:
    """ResNet ``arch`` in ``style`` cut after ``upto``, at ``width``, from the file ``weights`` (random weights,
    said in the log, when it is empty), for a method with more than one backbone; ``key`` is the config node
    whose ``NAME`` and ``WEIGHTS`` gave ``arch`` and ``weights`` (errors name them)."""
    trunk = ResNetTrunk(arch, upto, width, style, name_key=f"{key}.NAME")
    if weights:
        load_trunk_weights(trunk, weights, f"{key}.WEIGHTS")
    else:
        logger.info("%s up to %s starts from random weights (%s.WEIGHTS is empty)", arch, upto, key)
    return trunk
