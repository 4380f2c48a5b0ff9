"""OS-FER (trainers/osfer.py, trainers/osfer_losses.py): the flip attention consistency, the class activation
maps and the knownness against numbers computed by hand, the original's ResNets and weights files (Caffe's
style, the MS-Celeb state dict, the VGGFace2 pickle), the pseudo-labels fixed after stage A and carried through a
kill in stage C, the transductive pool, the fast path, and one run on the synthetic domains that must beat
chance on ACC-S."""
from __future__ import annotations

import json
import math
import os
import pickle

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from sklearn.metrics import roc_auc_score

from conftest import CHANCE_ACC_S, LEARNABLE_OPTS, check_fast_path_and_compiled_step, make_method_cfg
from engine.data.fast import FastPathSettings
from engine.modeling.resnet import ResNetTrunk, resnet_trunk
from engine.trainer import TRAINER_REGISTRY, build_trainer
from engine.utils.checkpoint import load_checkpoint
from engine.utils.errors import UserError
from engine.utils.logger import setup_logger
from trainers import osfer_losses as L
from trainers.osfer import DETECTOR, OSFER, DetectorNet, detector_data_cfg

H = torch.tensor([[1.0, 2.0], [3.0, 4.0]])


# -------------------------------------------------------------------------------------------------- the losses
def test_consistency_of_a_map_and_its_exact_mirror_is_zero():
    maps = torch.randn(3, 6, 7, 7, generator=torch.Generator().manual_seed(0))
    assert L.attention_consistency_loss(maps, maps.flip(-1)).item() == 0.0
    assert L.attention_consistency_loss(maps, maps).item() > 0  # an asymmetric map is not its own mirror


def test_flip_of_a_two_by_two_map_by_hand_and_as_the_originals_grid_sample():
    h = H.view(1, 1, 2, 2)
    # Flip(h) = [[2, 1], [4, 3]]: every entry differs by 1 -> MSE 1
    assert L.flip_maps(h).flatten().tolist() == [2.0, 1.0, 4.0, 3.0]
    assert L.attention_consistency_loss(h, h).item() == pytest.approx(1.0)
    # the original: grid_sample at the pixel centres with x negated, align_corners=True, on a 7 x 7 map
    maps = torch.randn(2, 6, 7, 7, generator=torch.Generator().manual_seed(1))
    ys, xs = torch.meshgrid(torch.linspace(-1, 1, 7), torch.linspace(-1, 1, 7), indexing="ij")
    grid = torch.stack([-xs, ys], dim=-1).expand(2, 7, 7, 2)
    sampled = F.grid_sample(maps, grid, mode="bilinear", padding_mode="border", align_corners=True)
    torch.testing.assert_close(L.flip_maps(maps), sampled, rtol=0, atol=1e-5)  # the grid points round in float


def test_detector_loss_and_knownness_by_hand():
    logits = torch.zeros(2, 3)
    maps = H.expand(2, 3, 2, 2)
    out = L.detector_loss(logits, maps, maps, torch.tensor([0, 2]), consistency_weight=6.0)
    # CE of uniform logits is log 3; the maps' mirror differs by 1 everywhere: MSE 1
    assert out["loss_ce"].item() == pytest.approx(math.log(3))
    assert out["loss_consistency"].item() == pytest.approx(1.0)
    assert out["loss"].item() == pytest.approx(math.log(3) + 6.0)
    # -CE(z, y^) = log p(y^): [2, 0, 0] labelled 0 -> 2 - log(e^2 + 2); labelled 1 -> -log(e^2 + 2)
    known = L.knownness(torch.tensor([[2.0, 0.0, 0.0], [2.0, 0.0, 0.0]]), torch.tensor([0, 1]))
    assert known.tolist() == pytest.approx([2 - math.log(math.e ** 2 + 2), -math.log(math.e ** 2 + 2)])


def _detector(width: int = 8, pool: int = 5) -> DetectorNet:
    torch.manual_seed(0)
    return DetectorNet(ResNetTrunk("resnet50", "layer4", width, "caffe"), 6, pool)


def test_cam_spatial_mean_plus_the_bias_is_the_logits():
    net = _detector().eval()
    logits, maps = net.logits_and_maps(torch.randn(4, 3, 64, 64))
    assert maps.shape == (4, 6, 2, 2)
    torch.testing.assert_close(maps.mean(dim=(2, 3)) + net.fc.bias, logits, rtol=1e-5, atol=1e-5)


def test_the_consistency_loss_trains_the_features_not_the_head():
    net = _detector()
    out = net(torch.randn(4, 3, 32, 32))
    L.attention_consistency_loss(out["maps"], out["maps_of_mirror"]).backward()
    assert net.fc.weight.grad is None and net.fc.bias.grad is None
    assert net.trunk.conv1.weight.grad is not None and net.trunk.conv1.weight.grad.abs().sum() > 0


# ------------------------------------------------------------------------------------ ResNets and weights files
def test_caffe_style_resnet_has_the_originals_pool_and_strides():
    torchvision_style, caffe = ResNetTrunk("resnet50", width=8), ResNetTrunk("resnet50", width=8, style="caffe")
    assert caffe.state_dict().keys() == torchvision_style.state_dict().keys()  # the same weights fit both
    assert (caffe.maxpool.padding, caffe.maxpool.ceil_mode) == (0, True)
    block = caffe.layer2[0]
    assert (block.conv1.stride, block.conv2.stride) == ((2, 2), (1, 1))  # the stride in the first 1x1 convolution
    assert torchvision_style.layer2[0].conv2.stride == (2, 2)
    x = torch.randn(1, 3, 224, 224)
    caffe.load_state_dict(torchvision_style.state_dict())
    a, b = caffe.eval()(x), torchvision_style.eval()(x)
    assert a.shape == b.shape == (1, 256, 7, 7) and not torch.allclose(a, b)  # same shapes, other features
    # no padding, sizes rounded up: 112 and 113 px both pool to 56 (torchvision's padded pool: 56 and 57)
    assert [caffe.maxpool(torch.zeros(1, 1, n, n)).shape[-1] for n in (112, 113)] == [56, 56]
    assert [torchvision_style.maxpool(torch.zeros(1, 1, n, n)).shape[-1] for n in (112, 113)] == [56, 57]


def _pickle_of_arrays(path, state: dict, old_numpy_names: bool = False) -> None:
    data = pickle.dumps({k: v.numpy() for k, v in state.items()}, protocol=2)
    if old_numpy_names:  # as numpy < 2 (and the VGGFace2 file) name the array reconstructor
        data = data.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
    path.write_bytes(data)


def test_vggface2_pickle_loads_strictly(tmp_path):
    reference = ResNetTrunk("resnet50", width=8, style="caffe").state_dict()
    state = {k: v for k, v in reference.items() if not k.endswith("num_batches_tracked")}  # a Caffe conversion's
    state["fc.weight"], state["fc.bias"] = torch.randn(8631, 256), torch.randn(8631)  # identities, cut away
    good = tmp_path / "resnet50_ft_weight.pkl"
    _pickle_of_arrays(good, state, old_numpy_names=True)
    trunk = resnet_trunk("resnet50", str(good), 8, style="caffe", key="TRAINER.OSFER.DETECTOR")
    for key, value in trunk.state_dict().items():
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(value, reference[key]), key

    missing = tmp_path / "missing.pkl"
    _pickle_of_arrays(missing, {k: v for k, v in state.items() if k != "layer4.2.bn3.running_var"})
    with pytest.raises(UserError, match=r"TRAINER.OSFER.DETECTOR.WEIGHTS.*1 missing \(layer4.2.bn3.running_var\)"):
        resnet_trunk("resnet50", str(missing), 8, style="caffe", key="TRAINER.OSFER.DETECTOR")
    with pytest.raises(UserError, match="of another shape"):  # a ResNet-50 at another width
        resnet_trunk("resnet50", str(good), 16, style="caffe", key="TRAINER.OSFER.DETECTOR")


class _NotAnArray:
    def __reduce__(self):
        return (os.getcwd, ())  # a pickle may call anything; this one must never be called


def test_a_pickle_that_is_not_arrays_is_refused_without_running_it(tmp_path):
    foreign = tmp_path / "foreign.pkl"
    foreign.write_bytes(pickle.dumps({"conv1.weight": _NotAnArray()}))
    refused = r"foreign.pkl \(TRAINER.OSFER.DETECTOR.WEIGHTS\).*refers to (posix|nt)\.getcwd"
    with pytest.raises(UserError, match=refused):
        resnet_trunk("resnet50", str(foreign), 8, key="TRAINER.OSFER.DETECTOR")
    broken = tmp_path / "broken.pkl"
    broken.write_bytes(b"not a pickle")
    with pytest.raises(UserError, match="as a pickle of numpy arrays"):
        resnet_trunk("resnet50", str(broken), 8, key="TRAINER.OSFER.DETECTOR")
    with pytest.raises(UserError, match=r"not found: .*absent.pkl \(TRAINER.OSFER.DETECTOR.WEIGHTS\)"):
        resnet_trunk("resnet50", str(tmp_path / "absent.pkl"), 8, key="TRAINER.OSFER.DETECTOR")


def test_the_originals_settings_and_an_ms_celeb_resnet18_file(synthetic_root, tmp_path):
    """resnet18.yaml: the original's optimisers, schedules, batches, augmentation and loss weight; stage A loads
    a MS-Celeb-style file (torchvision keys under 'state_dict', fc with 1000 outputs) strictly."""
    reference = torchvision.models.resnet18().state_dict()
    weights = tmp_path / "resnet18_msceleb.pth"
    torch.save({"state_dict": reference}, weights)
    cfg = make_method_cfg(synthetic_root, str(tmp_path / "o"), "OSFER", "MODEL.BACKBONE.WEIGHTS", str(weights),
                          "INPUT.SIZE", "(32, 32)", "DATALOADER.TRAIN_X.BATCH_SIZE", "24",
                          "TRAINER.OSFER.DETECTOR.BATCH_SIZE", "24", variant="resnet18")
    o, c = cfg.OPTIM, cfg.TRAINER.OSFER
    assert (o.NAME, o.LR, o.WEIGHT_DECAY, o.MAX_EPOCH) == ("adam", 1e-3, 1e-4, 60)
    assert (o.LR_SCHEDULER, tuple(o.STEPSIZE), o.GAMMA) == ("single_step", (1,), 0.9)  # ExponentialLR(0.9)
    d = c.DETECTOR
    assert (d.NAME, d.MAX_EPOCH, d.LR, d.WEIGHT_DECAY, c.CONSISTENCY_WEIGHT) == ("resnet50", 30, 1e-4, 1e-4, 6.0)
    assert (c.POOL, c.STYLE) == ("train", "caffe")
    assert list(cfg.INPUT.TRANSFORMS) == ["flip_or_noise", "normalize", "random_erasing"]
    assert list(d.TRANSFORMS) == ["gaussian_noise", "normalize", "random_erasing"]
    assert cfg.INPUT.GN_STD == pytest.approx(math.sqrt(30) / 255, abs=1e-5) and cfg.INPUT.GN_P == 0.5
    assert tuple(cfg.INPUT.RE_SCALE) == (0.02, 0.25) and cfg.INPUT.RE_P == 0.5
    t = build_trainer(cfg)
    for key, value in t.model.closed_set.trunk.state_dict().items():
        assert torch.equal(value, reference[key]), key
    assert t.model.closed_set.fc.in_features == 512 and t.model.detector.fc.in_features == 2048
    assert t.max_epoch == 90 and t.train_loader_u.batch_size == 24
    assert [g["lr"] for g in t._optims[DETECTOR].param_groups] == [1e-4]


def test_bad_settings_are_user_errors(synthetic_root, tmp_path):
    with pytest.raises(UserError, match="TRAINER.OSFER.POOL must be train or test"):
        build_trainer(make_method_cfg(synthetic_root, str(tmp_path), "OSFER", "TRAINER.OSFER.POOL", "val"))
    with pytest.raises(UserError, match="TRAINER.OSFER.STYLE must be"):
        build_trainer(make_method_cfg(synthetic_root, str(tmp_path), "OSFER", "TRAINER.OSFER.STYLE", "keras"))
    with pytest.raises(UserError, match=r"unknown ResNet 'vgg16' \(TRAINER.OSFER.DETECTOR.NAME\)"):
        build_trainer(make_method_cfg(synthetic_root, str(tmp_path), "OSFER", "TRAINER.OSFER.DETECTOR.NAME", "vgg16"))
    with pytest.raises(UserError, match="INPUT.GN_P must be in"):
        build_trainer(make_method_cfg(synthetic_root, str(tmp_path), "OSFER", "INPUT.GN_P", "1.5",
                                      "INPUT.TRANSFORMS", "['gaussian_noise']"))


# ------------------------------------------------------------------------------------------------- training
class Killed(Exception):
    """Stands in for a kill: raised inside a training step, after the checkpoints written so far."""


@TRAINER_REGISTRY.register(force=True)
class CountingOSFER(OSFER):
    """OSFER that counts its steps per stage and its pseudo-labellings, and dies at global step ``DIE_AT``."""

    DIE_AT = None

    def forward_backward(self, batch_x, batch_u):
        self.steps = getattr(self, "steps", {})  # counted from this trainer's start
        self.steps[self.stage] = self.steps.get(self.stage, 0) + 1
        if sum(self.steps.values()) == CountingOSFER.DIE_AT:
            raise Killed()
        return super().forward_backward(batch_x, batch_u)

    def assign_pseudo_labels(self) -> None:
        self.labellings = getattr(self, "labellings", 0) + 1
        super().assign_pseudo_labels()
        self.labels_after_stage_a = self.model.detector.pseudo_labels.clone()
        self.closed_set_after_stage_a = {k: v.clone() for k, v in self.model.closed_set.state_dict().items()}


def _staged_cfg(root, out, *opts):
    # 2 epochs of stage A (6 steps each), 3 of stage C (the pool: 7 classes x 8 images, 2 batches of 24 each)
    return make_method_cfg(root, out, "OSFER", "OPTIM.MAX_EPOCH", "2", "TRAINER.OSFER.DETECTOR.MAX_EPOCH", "3",
                           "TRAINER.OSFER.DETECTOR.BATCH_SIZE", "24", "DATALOADER.TRAIN_X.BATCH_SIZE", "24",
                           "TRAIN.CHECKPOINT_FREQ", "1", "TRAINER.NAME", "CountingOSFER", *opts)


def test_pseudo_labels_are_fixed_after_stage_a_and_a_kill_in_stage_c_resumes_there(synthetic_root, tmp_path):
    straight = build_trainer(_staged_cfg(synthetic_root, str(tmp_path / "straight")))
    straight.train()
    assert straight.steps == {"closed_set": 12, "detector": 6} and straight.labellings == 1
    labels = straight.model.detector.pseudo_labels
    assert torch.equal(labels, straight.labels_after_stage_a) and (labels >= 0).all()
    # stage C trains the detector only: the closed-set model that gave the labels (and the predictions) is kept
    for key, value in straight.model.closed_set.state_dict().items():
        assert torch.equal(value, straight.closed_set_after_stage_a[key]), key
    with torch.no_grad():  # the labels are the closed-set model's argmax over the pool
        straight.set_model_mode("eval")
        expected = torch.cat([straight.model.closed_set(b["img"]).argmax(1) for b in straight.pool_loader])
    assert torch.equal(labels, expected)
    # fixed when stage A ended: the checkpoint of its last epoch holds them
    end_of_stage_a = load_checkpoint(str(tmp_path / "straight" / DETECTOR / "model.pth.tar-2"))
    assert torch.equal(end_of_stage_a["state_dict"]["pseudo_labels"], labels)

    out = str(tmp_path / "killed")
    CountingOSFER.DIE_AT = 12 + 6  # the 2nd step of stage C's 3rd epoch: after the checkpoint of its 2nd
    try:
        with pytest.raises(Killed):
            build_trainer(_staged_cfg(synthetic_root, out)).train()
    finally:
        CountingOSFER.DIE_AT = None
    resumed = build_trainer(_staged_cfg(synthetic_root, out))
    resumed.train()
    assert resumed.steps == {"detector": 2} and getattr(resumed, "labellings", 0) == 0  # in stage C, labels kept
    assert torch.equal(resumed.model.detector.pseudo_labels, labels)
    assert resumed.test_results == straight.test_results
    results = json.load(open(os.path.join(out, "results.json")))
    assert results["unseen_score"] == "neg_detector_ce" and results["epochs_trained"] == 5


def test_transductive_pool_and_auc_u_on_the_detector_loss(synthetic_root, tmp_path):
    """POOL test: the pseudo-labels are the closed-set predictions on the test images, the saved knownness is
    -CE of the detector on them, and AUC-U is roc_auc(unseen, CE)."""
    out = tmp_path / "transductive"
    t = build_trainer(make_method_cfg(synthetic_root, str(out), "OSFER", "TRAINER.OSFER.POOL", "test",
                                      "OPTIM.MAX_EPOCH", "1", "TRAINER.OSFER.DETECTOR.MAX_EPOCH", "1",
                                      "TEST.SAVE_PREDICTIONS", "True"))
    assert t.pool is t.dm.dataset.test and t.pool_loader is t.test_loader
    t.train()
    saved = np.load(out / "predictions.npz")
    pseudo = t.model.detector.pseudo_labels.cpu()
    assert torch.equal(pseudo, torch.from_numpy(saved["probs"]).argmax(1))
    t.set_model_mode("eval")
    with torch.no_grad():
        logits = torch.cat([t.model.detector(b["img"], mirrored=False)["logits"] for b in t.test_loader])
    ce = F.cross_entropy(logits, pseudo, reduction="none").numpy()
    np.testing.assert_allclose(saved["knownness"], -ce, rtol=1e-5, atol=1e-5)
    metrics = json.load(open(out / "results.json"))["metrics"]
    assert metrics["auc_u"] == pytest.approx(100 * roc_auc_score(saved["unseen"], ce), abs=1e-6)


def test_end_to_end_the_tiny_config_learns(learnable_root, tmp_path):
    """configs/trainers/OSFER/tiny.yaml on three synthetic domains, the target a twin of one of them (the method
    must learn, not transfer across styles): results.json with its own score, every loss term logged finite, and
    ACC-S well above chance (measured 35.0-38.3, seeds 1-3; chance 16.7 +- 3.4 on 120 seen test faces)."""
    out = tmp_path / "e2e"
    setup_logger(str(out))
    cfg = make_method_cfg(learnable_root, str(out), "OSFER", *LEARNABLE_OPTS)
    build_trainer(cfg).train()
    results = json.load(open(out / "results.json"))
    assert results["trainer"] == "OSFER" and results["unseen_score"] == "neg_detector_ce"
    assert results["epochs_trained"] == cfg.OPTIM.MAX_EPOCH + cfg.TRAINER.OSFER.DETECTOR.MAX_EPOCH
    logged = [json.loads(line) for line in open(out / "metrics.jsonl")]
    terms = {"train/loss", "train/loss_ce", "train/loss_consistency"}
    assert terms <= {k for r in logged for k in r}
    assert all(math.isfinite(r[k]) for r in logged for k in terms if k in r)
    assert results["metrics"]["acc_s"] > CHANCE_ACC_S + 8


def _to_stage_c(trainer) -> None:
    trainer.epoch = trainer.closed_set_epochs
    trainer.assign_pseudo_labels()


@pytest.mark.parametrize("stage", ["closed_set", "detector"])
def test_fast_path_and_compiled_step_equal_the_eager_step(synthetic_root, tmp_path, compile_with, stage):
    # the detector's transforms of the original's settings run on the cache too
    FastPathSettings.from_cfg(detector_data_cfg(make_method_cfg(synthetic_root, str(tmp_path), "OSFER",
                                                                variant="resnet18")))
    # stage A compiles its network (its loss is one cross-entropy), stage C its network and its loss; a ResNet-18
    # detector traces in half the time of the ResNet-50 and has the same head, maps and loss
    check_fast_path_and_compiled_step(synthetic_root, tmp_path, "OSFER", "resnet18", compile_with,
                                      prepare=_to_stage_c if stage == "detector" else None,
                                      min_graphs=2 if stage == "detector" else 1,
                                      extra_opts=("TRAINER.OSFER.DETECTOR.NAME", "resnet18"))
