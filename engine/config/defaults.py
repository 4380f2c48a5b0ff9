"""Default configuration, with Dassl's key names wherever Dassl has the concept.

Keys this engine adds (not in Dassl): ``OUTPUT_LOCK_STALE_S``, ``DATASET.UNSEEN_CLASSES``, ``DATALOADER.DOMAIN_EPOCH``,
``DATALOADER.CACHE.*`` (the fast data path, :mod:`engine.data.fast.settings`), ``INPUT.AFFINE_*``,
``INPUT.RE_*``, ``INPUT.GN_P`` and ``INPUT.FLIP_OR_NOISE_P`` (the ``random_affine``, ``random_erasing``,
``gaussian_noise`` and ``flip_or_noise`` transforms; Dassl's noise has a fixed p 0.5), ``CUDNN_BENCHMARK``,
``MODEL.BACKBONE.DOWNLOAD_ROOT``, ``MODEL.BACKBONE.WEIGHTS``, ``MODEL.BACKBONE.WIDTH``, ``MODEL.COMPILE``,
``MODEL.COMPILE_MODE``, ``MODEL.PATCH_EMBED_MATMUL``, ``MODEL.CLS_ONLY_LAST_BLOCK``, ``OPTIM.FUSED``,
``TRAIN.PRECISION``, ``TRAIN.CHECKPOINT_STEPS``, ``TRAIN.ON_NONFINITE``, ``TEST.NUM_THRESHOLDS``,
``TEST.SAVE_PREDICTIONS``. Method keys
(``TRAINER.<METHOD>.*``) and dataset keys (``DATASET.<READER>.*``...) are added by config hooks of the
packages that define them (see :func:`engine.config.extend_cfg`).

Defaults that differ from Dassl, and why:
- ``INPUT.PIXEL_MEAN/STD`` default to CLIP's statistics because every trainer here is CLIP-based.
- ``SEED`` defaults to 1 (Dassl: -1, unseeded): results should be reproducible unless asked otherwise.
- ``TEST.EVALUATOR`` defaults to ``OpenSet``: every run here is an open-set run.
- ``MODEL.BACKBONE.NAME`` defaults to ``ViT-B/32``, the paper's backbone.
- ``INPUT.INTERPOLATION`` defaults to ``bicubic``, as CLIP's own preprocessing.
"""
from yacs.config import CfgNode as CN

CLIP_PIXEL_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_PIXEL_STD = [0.26862954, 0.26130258, 0.27577711]

_C = CN()

_C.VERSION = 1
# Directory to save the output files (like log.txt and model weights)
_C.OUTPUT_DIR = "./output"
# Path to a directory where the files were saved previously (resume from its last checkpoint)
_C.RESUME = ""
# A run locks OUTPUT_DIR (OUTPUT_DIR/.lock: pid and host) and touches the lock every quarter of this; a lock of
# another host untouched for this many seconds is taken to be left by a dead run (see engine/utils/output_lock.py)
_C.OUTPUT_LOCK_STALE_S = 300
# Set seed to a negative value to randomize everything; 0 is a valid seed
_C.SEED = 1
_C.USE_CUDA = True
# On CUDA, let cuDNN time its convolution algorithms for each new input shape and keep the fastest, as
# Dassl's tools/train.py does (torch.backends.cudnn.benchmark). False: cuDNN's heuristic choice instead
_C.CUDNN_BENCHMARK = True
# Print detailed information (e.g. the split table and the config)
_C.VERBOSE = True

###########################
# Input
###########################
_C.INPUT = CN()
_C.INPUT.SIZE = (224, 224)
# Mode of interpolation in resize functions
_C.INPUT.INTERPOLATION = "bicubic"
# For available choices please refer to engine/data/transforms.py
_C.INPUT.TRANSFORMS = ("random_resized_crop", "random_flip", "normalize")
# If True, tfm_train and tfm_test will be None
_C.INPUT.NO_TRANSFORM = False
_C.INPUT.PIXEL_MEAN = list(CLIP_PIXEL_MEAN)
_C.INPUT.PIXEL_STD = list(CLIP_PIXEL_STD)
# Padding for random crop
_C.INPUT.CROP_PADDING = 4
# Scale range of random resized crop (fraction of the image area)
_C.INPUT.RRCROP_SCALE = (0.08, 1.0)
# Mean and std for gaussian_noise and flip_or_noise (on the [0, 1] tensor), and the probability per image of
# gaussian_noise
_C.INPUT.GN_MEAN = 0.0
_C.INPUT.GN_STD = 0.15
_C.INPUT.GN_P = 1.0
# flip_or_noise (OS-FER's and EAC's): the probability per image of a flip or the noise (each half of it)
_C.INPUT.FLIP_OR_NOISE_P = 0.5
# Colour jitter strengths
_C.INPUT.COLORJITTER_B = 0.4
_C.INPUT.COLORJITTER_C = 0.4
_C.INPUT.COLORJITTER_S = 0.4
_C.INPUT.COLORJITTER_H = 0.1
# Probability of random grayscale
_C.INPUT.RGS_P = 0.2
# random_affine: rotation within +-DEGREES, translation within +-TRANSLATE of the width and height, scale in
# SCALE (the values of DUML's and LA-CMFER's training transform)
_C.INPUT.AFFINE_DEGREES = 15.0
_C.INPUT.AFFINE_TRANSLATE = (0.05, 0.05)
_C.INPUT.AFFINE_SCALE = (0.9, 1.05)
# random_erasing (torchvision's RandomErasing, after normalize, aspect ratio in (0.3, 3.3), erased to 0):
# probability per image and the erased area's range as a fraction of the image area (torchvision's defaults)
_C.INPUT.RE_P = 0.5
_C.INPUT.RE_SCALE = (0.02, 0.33)
# Gaussian blur probability and kernel size
_C.INPUT.GB_P = 0.5
_C.INPUT.GB_K = 21

###########################
# Dataset
###########################
_C.DATASET = CN()
# Directory where datasets are stored
_C.DATASET.ROOT = ""
_C.DATASET.NAME = ""
# List of source/target domains' names (strings)
_C.DATASET.SOURCE_DOMAINS = ()
_C.DATASET.TARGET_DOMAINS = ()
# Open set: classes held out of training (names, read by open-set datasets; aliases as the dataset accepts)
_C.DATASET.UNSEEN_CLASSES = ()

###########################
# Dataloader
###########################
_C.DATALOADER = CN()
_C.DATALOADER.NUM_WORKERS = 4
# Apply transformations to an image K times (during training)
_C.DATALOADER.K_TRANSFORMS = 1
# img0 denotes image tensor without augmentation; useful for consistency learning
_C.DATALOADER.RETURN_IMG0 = False
# RandomDomainSampler epoch length: "smallest" (Dassl: ends when the smallest domain runs out)
# or "all" (one pass over all images; smaller domains are reshuffled and reused to keep balance)
_C.DATALOADER.DOMAIN_EPOCH = "all"
# Setting for the train_x data-loader
_C.DATALOADER.TRAIN_X = CN()
_C.DATALOADER.TRAIN_X.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_X.BATCH_SIZE = 32
# Parameter for RandomDomainSampler; 0 or -1 means sampling from all domains
_C.DATALOADER.TRAIN_X.N_DOMAIN = 0
# Parameter of RandomClassSampler (number of instances per class)
_C.DATALOADER.TRAIN_X.N_INS = 16
# Setting for the train_u data-loader
_C.DATALOADER.TRAIN_U = CN()
# Set to false if you want to have unique data loader params for train_u
_C.DATALOADER.TRAIN_U.SAME_AS_X = True
_C.DATALOADER.TRAIN_U.SAMPLER = "RandomSampler"
_C.DATALOADER.TRAIN_U.BATCH_SIZE = 32
_C.DATALOADER.TRAIN_U.N_DOMAIN = 0
_C.DATALOADER.TRAIN_U.N_INS = 16
# Setting for the test data-loader
_C.DATALOADER.TEST = CN()
_C.DATALOADER.TEST.SAMPLER = "SequentialSampler"
_C.DATALOADER.TEST.BATCH_SIZE = 32
# The fast data path: decoded-image caches and augmentation on the device (see engine/data/fast/settings.py)
_C.DATALOADER.CACHE = CN()
_C.DATALOADER.CACHE.ENABLED = False
_C.DATALOADER.CACHE.DIR = "~/.cache/promptemo/decoded"
# Cached side in pixels; 0 = max(INPUT.SIZE)
_C.DATALOADER.CACHE.SIZE = 0
# Keep the whole uint8 array on the training device (N x S x S x 3 bytes)
_C.DATALOADER.CACHE.ON_DEVICE = False
# Processes decoding a split; -1 = DATALOADER.NUM_WORKERS
_C.DATALOADER.CACHE.NUM_WORKERS = -1

###########################
# Model
###########################
_C.MODEL = CN()
# Path to model weights (for initialization)
_C.MODEL.INIT_WEIGHTS = ""
_C.MODEL.BACKBONE = CN()
# CLIP backbone: an OpenAI name ("ViT-B/32"), a path to a local checkpoint file, or "tiny"; for the methods
# not built on CLIP, a ResNet (resnet18, resnet34, resnet50)
_C.MODEL.BACKBONE.NAME = "ViT-B/32"
_C.MODEL.BACKBONE.PRETRAINED = True
# Where OpenAI names are downloaded to and looked up ("" = ~/.cache/clip, as clip.load does)
_C.MODEL.BACKBONE.DOWNLOAD_ROOT = ""
# Non-CLIP backbones (engine/modeling/resnet.py): a local weights file ("" = random weights) and the width of
# the first stage (64 = torchvision's; smaller for CPU tests)
_C.MODEL.BACKBONE.WEIGHTS = ""
_C.MODEL.BACKBONE.WIDTH = 64
# torch.compile what trainers pass through engine.utils.tools.compiled (encoders, losses) and the fast path's
# training augmentation (faster steps on GPUs after a one-off compilation)
_C.MODEL.COMPILE = False
# torch.compile's mode: default, max-autotune-no-cudagraphs, or (GPUs) reduce-overhead / max-autotune,
# which also replay the compiled encoders and losses as CUDA graphs: a whole graph in one launch, for steps
# whose pace is set by the host's kernel launches (see engine/utils/tools.compiled)
_C.MODEL.COMPILE_MODE = "default"
# Compute a ViT's patch embedding as one matrix product instead of a convolution (same weights and result;
# see engine/modeling/clip_backbone.py and docs/performance.md)
_C.MODEL.PATCH_EMBED_MATMUL = False
# In a ViT's last block, compute the class token's output only (the image feature; the other tokens' outputs
# there are discarded): the same feature, parameters and checkpoint keys, less work (see clip_backbone.py)
_C.MODEL.CLS_ONLY_LAST_BLOCK = True
# Definition of a head network (used by trainers that have one)
_C.MODEL.HEAD = CN()
_C.MODEL.HEAD.NAME = ""
_C.MODEL.HEAD.HIDDEN_LAYERS = ()
_C.MODEL.HEAD.ACTIVATION = "relu"
_C.MODEL.HEAD.BN = True
_C.MODEL.HEAD.DROPOUT = 0.0

###########################
# Optimization
###########################
_C.OPTIM = CN()
_C.OPTIM.NAME = "adam"
_C.OPTIM.LR = 0.0003
_C.OPTIM.WEIGHT_DECAY = 5e-4
_C.OPTIM.MOMENTUM = 0.9
_C.OPTIM.SGD_DAMPNING = 0
_C.OPTIM.SGD_NESTEROV = False
_C.OPTIM.ADAM_BETA1 = 0.9
_C.OPTIM.ADAM_BETA2 = 0.999
# Learning rate scheduler: single_step, multi_step, cosine or inverse_decay
_C.OPTIM.LR_SCHEDULER = "single_step"
# When the scheduler steps: after every "epoch" (Dassl) or after every training "step"
_C.OPTIM.LR_UPDATE = "epoch"
# inverse_decay: lr * (1 + GAMMA * min(1, t / MAX_ITER)) ** -POWER at scheduler step t (Caffe's "inv", DANN's values)
_C.OPTIM.INVERSE_DECAY = CN()
_C.OPTIM.INVERSE_DECAY.GAMMA = 10.0
_C.OPTIM.INVERSE_DECAY.POWER = 0.75
_C.OPTIM.INVERSE_DECAY.MAX_ITER = 10000
# -1 or 0 means the stepsize is equal to max_epoch
_C.OPTIM.STEPSIZE = (-1,)
_C.OPTIM.GAMMA = 0.1
_C.OPTIM.MAX_EPOCH = 10
# Set WARMUP_EPOCH larger than 0 to activate warmup training
_C.OPTIM.WARMUP_EPOCH = -1
# Either linear or constant
_C.OPTIM.WARMUP_TYPE = "linear"
# Constant learning rate when type=constant
_C.OPTIM.WARMUP_CONS_LR = 1e-5
# Minimum learning rate when type=linear
_C.OPTIM.WARMUP_MIN_LR = 1e-5
# Recount epoch for the next scheduler (last_epoch=-1)
# Otherwise last_epoch=warmup_epoch
_C.OPTIM.WARMUP_RECOUNT = True
# Fused optimiser kernels (one kernel for all parameters) when every parameter is on a GPU
_C.OPTIM.FUSED = True

###########################
# Train
###########################
_C.TRAIN = CN()
# How often (epoch) to save model during training
# Set to 0 or negative value to only save the last one
_C.TRAIN.CHECKPOINT_FREQ = 0
# Also save every N steps inside an epoch (0 = never); only the two newest of these are kept.
# A run killed at any point resumes from the newest readable checkpoint with the same results.
_C.TRAIN.CHECKPOINT_STEPS = 0
# A NaN or infinite loss: "stop" (name the step and the loss terms, keep the last good checkpoint;
# noticed at the next log line or checkpoint, without per-step synchronisation) or "skip" (drop that
# step's update; reads the loss back at every step)
_C.TRAIN.ON_NONFINITE = "stop"
# How often (batch) to print training information
_C.TRAIN.PRINT_FREQ = 10
# Use 'train_x', 'train_u' or 'smaller_one' to count
# the number of iterations in an epoch (for DA and SSL)
_C.TRAIN.COUNT_ITER = "train_x"
# Numerics of forward passes: "auto" (bf16 autocast where the device supports it, i.e. CUDA with
# bf16; fp32 on the CPU), "bf16" or "fp32". Parameters, optimiser state and losses stay fp32.
_C.TRAIN.PRECISION = "auto"

###########################
# Test
###########################
_C.TEST = CN()
_C.TEST.EVALUATOR = "OpenSet"
# Number of thresholds of the DAML dynamic-threshold grid
_C.TEST.NUM_THRESHOLDS = 10
# Also write the test split's per-sample probabilities, labels, unseen flags and the class names to
# OUTPUT_DIR/predictions.npz
_C.TEST.SAVE_PREDICTIONS = False
_C.TEST.NO_TEST = False
# Use test or val set for FINAL evaluation
_C.TEST.SPLIT = "test"
# Which model to test after training: last_step, or best_val (evaluated on the val split after every
# epoch, the best one kept; a dataset without a val split is an error, as selecting on the test split
# would use its labels)
_C.TEST.FINAL_MODEL = "last_step"

###########################
# Trainer specifics
###########################
_C.TRAINER = CN()
_C.TRAINER.NAME = ""


def get_cfg_default() -> CN:
    """A fresh, mutable copy of the defaults (before ``extend_cfg``)."""
    return _C.clone()
