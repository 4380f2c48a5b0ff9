"""The PromptEmo trainer on the synthetic test domains with the tiny backbone: gradients go where the
paper says, target labels cannot influence training, ablations are configs, it runs end to end."""
from __future__ import annotations

import glob
import json
import math
import os

import pytest
import torch

from conftest import ROOT, make_cfg
from engine.config import extend_cfg, get_cfg_default, merge_from_file
from engine.trainer import build_trainer
from engine.utils.errors import UserError
from trainers.promptemo import load_descriptions

TINY = ["TRAINER.PROMPTEMO.PROMPT_LR", "0.001", "OPTIM.NAME", "adamw", "OPTIM.LR", "0.002",
        "OPTIM.LR_SCHEDULER", "multi_step", "OPTIM.STEPSIZE", "(5,)", "DATALOADER.TRAIN_X.SAMPLER",
        "RandomDomainSampler", "SEED", "0", "TRAIN.PRINT_FREQ", "2"]


def _trainer(root, out, *opts):
    return build_trainer(make_cfg(root, out, *TINY, *opts, trainer="PromptEmo"))


def _one_step(trainer):
    trainer.set_model_mode("train")
    batch_x, batch_u = next(iter(trainer.train_loader_x)), next(iter(trainer.train_loader_u))
    return trainer.forward_backward(batch_x, batch_u)


def test_gradients_reach_prompts_and_image_encoder_only(synthetic_root, tmp_path):
    t = _trainer(synthetic_root, str(tmp_path))
    neg_before = t.neg_features.clone()
    text_before = {n: p.clone() for n, p in t.text_encoder.named_parameters()}
    ctx_before = t.model.prompt_learner.ctx.detach().clone()
    losses = _one_step(t)
    assert set(losses) >= {"loss_ps", "loss_ns", "loss_pt", "loss_nt", "loss_ess", "loss_lda", "pseudo_share_p",
                           "pseudo_share_n"}
    assert all(p.grad is None for p in t.text_encoder.parameters())  # frozen text encoder
    assert all(torch.equal(p, text_before[n]) for n, p in t.text_encoder.named_parameters())
    assert not t.neg_features.requires_grad and torch.equal(t.neg_features, neg_before)  # h_N fixed
    assert isinstance(t.logit_scale, float)  # a constant, not a parameter
    ctx = t.model.prompt_learner.ctx
    assert ctx.grad is not None and ctx.grad.abs().sum() > 0 and not torch.equal(ctx.detach(), ctx_before)
    visual_grads = [p.grad for p in t.model.image_encoder.parameters()]
    assert all(g is not None for g in visual_grads) and sum(g.abs().sum() for g in visual_grads) > 0
    # two parameter groups with the paper's two learning rates
    assert [g["lr"] for g in t.optim.param_groups] == pytest.approx([2e-3, 1e-3])
    assert t.cfg.TRAINER.PROMPTEMO.N_CTX == 8 and ctx.shape[:2] == (6, 8)  # delta_k per seen class


def test_ess_gradient_only_moves_the_prompt_vectors(synthetic_root, tmp_path):
    from trainers.promptemo_losses import ess_loss

    t = _trainer(synthetic_root, str(tmp_path))
    t.model.zero_grad()
    ess_loss(t.positive_features(), t.neg_features).backward()
    assert t.model.prompt_learner.ctx.grad.abs().sum() > 0
    assert all(p.grad is None for p in t.model.image_encoder.parameters())


def _shuffle_target_labels(monkeypatch):
    """Give every target training image a wrong label, keeping paths and order."""
    import datasets.mofer as mofer

    real = mofer.build_domain_reader

    class Shuffled:
        def __init__(self, reader):
            self.reader = reader

        def read(self):
            splits = self.reader.read()
            if self.reader.name == "synth_wild":
                splits.train = [it._replace(label=(it.label + 3) % 7) for it in splits.train]
            return splits

    monkeypatch.setattr(mofer, "build_domain_reader", lambda cfg, name: Shuffled(real(cfg, name)))


def test_target_labels_never_reach_training(synthetic_root, tmp_path, monkeypatch):
    a = _trainer(synthetic_root, str(tmp_path / "a"), "OPTIM.MAX_EPOCH", "1")
    a.train()
    _shuffle_target_labels(monkeypatch)
    b = _trainer(synthetic_root, str(tmp_path / "b"), "OPTIM.MAX_EPOCH", "1")
    assert b.dm.dataset.target_train_labels != a.dm.dataset.target_train_labels  # the shuffle took effect
    b.train()
    for (name, pa), (_, pb) in zip(a.model.state_dict().items(), b.model.state_dict().items()):
        assert torch.equal(pa, pb), name


def test_trains_end_to_end_and_writes_results(synthetic_root, tmp_path):
    out = tmp_path / "run"
    t = _trainer(synthetic_root, str(out), "OPTIM.MAX_EPOCH", "2", "TRAIN.CHECKPOINT_FREQ", "1")
    t.train()
    results = json.load(open(out / "results.json"))
    assert results["trainer"] == "PromptEmo" and results["epochs_trained"] == 2
    assert 0 <= results["metrics"]["auc_u"] <= 100
    # checkpoints hold the image encoder and delta_k, not the frozen text encoder
    ckpt = torch.load(out / "model" / "model.pth.tar-2", weights_only=True)
    keys = list(ckpt["state_dict"])
    assert "prompt_learner.ctx" in keys and any(k.startswith("image_encoder.") for k in keys)
    assert not any("transformer.resblocks" in k and not k.startswith("image_encoder") for k in keys)
    assert sorted(os.path.basename(p) for p in glob.glob(str(out / "model" / "model.pth.tar-*"))) == [
        "model.pth.tar-1", "model.pth.tar-2"]
    records = [json.loads(line) for line in open(out / "metrics.jsonl")]
    logged = [r for r in records if "train/loss_ps" in r]
    assert logged and all({"train/loss_ns", "train/loss_pt", "train/loss_nt", "train/loss_ess", "train/loss_lda",
                           "train/pseudo_share_p", "train/pseudo_share_n"} <= set(r) for r in logged)
    # inference gives probabilities averaged over the two branches
    images = next(iter(t.test_loader))["img"][:4].to(t.device)
    probs = t.model_inference(images)
    assert torch.allclose(probs.sum(-1), torch.ones(4, device=probs.device), atol=1e-5)


ABLATIONS = sorted(glob.glob(os.path.join(ROOT, "configs", "trainers", "PromptEmo", "ablations", "*.yaml")))


@pytest.mark.parametrize("path", ABLATIONS, ids=[os.path.basename(p) for p in ABLATIONS])
def test_every_ablation_is_a_config_that_trains(synthetic_root, tmp_path, path):
    cfg = get_cfg_default()
    extend_cfg(cfg)
    merge_from_file(cfg, path)
    c = cfg.TRAINER.PROMPTEMO
    switches = (c.POS_PROMPT, c.USE_NEG, c.USE_TARGET, c.USE_ESS, c.USE_LDA)
    t = _trainer(synthetic_root, str(tmp_path), "TRAINER.PROMPTEMO.POS_PROMPT", c.POS_PROMPT,
                 "TRAINER.PROMPTEMO.USE_NEG", str(c.USE_NEG), "TRAINER.PROMPTEMO.USE_TARGET", str(c.USE_TARGET),
                 "TRAINER.PROMPTEMO.USE_ESS", str(c.USE_ESS), "TRAINER.PROMPTEMO.USE_LDA", str(c.USE_LDA))
    losses = _one_step(t)
    assert (losses["loss_ns"] != 0) == c.USE_NEG
    assert (losses["loss_lda"] != 0) == c.USE_LDA
    assert (losses["loss_ess"] != 0) == c.USE_ESS
    assert (t.model.prompt_learner.ctx is not None) == (c.POS_PROMPT == "D"), switches
    assert torch.isfinite(losses["loss"])


def test_descriptions_file_checks(tmp_path):
    shipped = load_descriptions("configs/descriptions/facs.json", ["surprise", "neutral"])
    assert shipped[0].startswith("a face with eyebrows raised")
    (tmp_path / "d.json").write_text(json.dumps({"happy": "a smiling face.", "_note": "aliases work"}))
    assert load_descriptions(str(tmp_path / "d.json"), ["happiness"]) == ["a smiling face."]
    with pytest.raises(UserError, match="has no description of anger"):
        load_descriptions(str(tmp_path / "d.json"), ["happiness", "anger"])
    with pytest.raises(UserError, match="descriptions file not found"):
        load_descriptions(str(tmp_path / "none.json"), ["anger"])


def test_too_long_description_is_rejected_not_cut(synthetic_root, tmp_path):
    long = {c: "a face " + " ".join(["tense"] * 70) for c in
            ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")}
    path = tmp_path / "long.json"
    path.write_text(json.dumps(long))
    with pytest.raises(UserError, match="must have at most 67"):
        _trainer(synthetic_root, str(tmp_path / "o"), "TRAINER.PROMPTEMO.DESCRIPTIONS", str(path))


def _assert_same_step(reference, losses_ref: dict, other, losses_other: dict, rel: float, abs_: float) -> None:
    """Two trainers' step: the same losses (``rel``/``abs_``) and gradients (``rel`` of each parameter's
    largest gradient). Gradients, not updated weights: Adam's first step is about lr * sign(gradient),
    so rounding noise on a near-zero gradient flips a weight by 2 * lr without meaning anything."""
    for name, value in losses_ref.items():
        assert float(losses_other[name]) == pytest.approx(float(value), rel=rel, abs=abs_), name
    grads_other = dict(other.model.named_parameters())
    for name, param in reference.model.named_parameters():
        if param.grad is not None:
            scale = param.grad.abs().max().item() + 1e-12
            assert torch.allclose(grads_other[name].grad, param.grad, atol=rel * scale), name


@pytest.fixture
def full_fp32():
    """No TF32 on a GPU (cuDNN convolutions use it by default) for comparisons at fp32 tolerance."""
    saved = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = saved


def test_patch_embed_matmul_trains_like_the_convolution(synthetic_root, tmp_path, full_fp32):
    """MODEL.PATCH_EMBED_MATMUL changes how the patch embedding is computed, not the training step."""
    # Compared in fp32: bf16 autocast (the default on a GPU) and TF32 round the convolution and the matrix
    # product differently (2e-4 relative on loss_lda on an H200).
    conv = _trainer(synthetic_root, str(tmp_path / "conv"), "TRAIN.PRECISION", "fp32")
    matmul = _trainer(synthetic_root, str(tmp_path / "matmul"), "TRAIN.PRECISION", "fp32",
                      "MODEL.PATCH_EMBED_MATMUL", "True")
    assert type(matmul.model.image_encoder.conv1).__name__ == "PatchEmbedMatmul"
    _assert_same_step(conv, _one_step(conv), matmul, _one_step(matmul), rel=1e-4, abs_=1e-5)
    assert list(conv.model.state_dict()) == list(matmul.model.state_dict())  # checkpoints interchangeable


@pytest.mark.parametrize("patch_embed_matmul", ["False", "True"])
def test_compiled_step_equals_eager_without_graph_breaks(synthetic_root, tmp_path, compile_with, full_fp32,
                                                         patch_embed_matmul):
    """MODEL.COMPILE compiles the image encoder, the text encoder, the losses and (on the decoded-image
    cache) the training augmentation. One step gives the eager step's losses and gradients, and nothing in
    them breaks the graph (a break falls back to one launch per operation, the host overhead that
    compiling removes)."""
    import torch._dynamo

    counters = compile_with("aot_eager")
    opts = ["TRAIN.PRECISION", "fp32", "MODEL.PATCH_EMBED_MATMUL", patch_embed_matmul,
            "DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR", str(tmp_path / "cache")]
    eager = _trainer(synthetic_root, str(tmp_path / "eager"), *opts)
    comp = _trainer(synthetic_root, str(tmp_path / "compiled"), *opts, "MODEL.COMPILE", "True")
    for part in (comp.encoder, comp.text_encoder, comp.step_losses, comp.train_loader_x.augment.apply):
        assert hasattr(part, "_torchdynamo_orig_callable") or hasattr(part, "_orig_mod"), part
    losses_eager, losses_comp = _one_step(eager), _one_step(comp)
    assert set(losses_eager) == set(losses_comp)
    assert all(p.grad is not None for p in eager.model.parameters())
    _assert_same_step(eager, losses_eager, comp, losses_comp, rel=1e-5, abs_=1e-6)
    assert counters["stats"]["unique_graphs"] >= 4  # image encoder, text encoder, losses, augmentation
    assert not counters["graph_break"], dict(counters["graph_break"])
    # Later steps reuse the graphs: a guard that failed every step would recompile each time, then fall
    # back to eager mode after torch's recompilation limit
    with torch._dynamo.config.patch(error_on_recompile=True):
        batches_x, batches_u = iter(comp.train_loader_x), iter(comp.train_loader_u)
        for _ in range(2):
            comp.forward_backward(next(batches_x), next(batches_u))
    assert list(eager.model.state_dict()) == list(comp.model.state_dict())  # checkpoints keep plain names


@pytest.mark.parametrize("mode, augmentation_mode", [("reduce-overhead", None),
                                                     ("max-autotune", "max-autotune-no-cudagraphs"),
                                                     ("default", None)])
def test_compile_mode_reaches_every_compiled_part_but_the_augmentation_skips_cuda_graphs(
        synthetic_root, tmp_path, monkeypatch, mode, augmentation_mode):
    """MODEL.COMPILE_MODE goes to torch.compile for the encoders and the losses. The augmentation runs
    twice per step (source, then target batch): a CUDA-graph replay of it would overwrite the source
    batch, so it gets the same mode without CUDA graphs ("default" is passed as no mode at all)."""
    modes = {}

    def record(fn, **options):
        modes[getattr(fn, "__name__", type(fn).__name__)] = options.get("mode")
        return fn

    monkeypatch.setattr(torch, "compile", record)
    _trainer(synthetic_root, str(tmp_path), "MODEL.COMPILE", "True", "MODEL.COMPILE_MODE", mode,
             "DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR", str(tmp_path / "cache"))
    expected = None if mode == "default" else mode
    assert modes == {"VisionTransformer": expected, "TextEncoder": expected, "step_losses": expected,
                     "apply": augmentation_mode}


def test_training_loop_marks_each_step_only_under_cuda_graphs(synthetic_root, tmp_path, monkeypatch):
    """Under CUDA graphs each step must be announced (torch.compiler.cudagraph_mark_step_begin) so that
    it may reuse the last step's output memory; otherwise nothing is called."""
    calls = []
    monkeypatch.setattr(torch.compiler, "cudagraph_mark_step_begin", lambda: calls.append(1))
    t = _trainer(synthetic_root, str(tmp_path / "plain"), "OPTIM.MAX_EPOCH", "1")
    assert not t.cuda_graph_steps  # no GPU, or no CUDA-graph mode
    t.train()
    assert calls == []
    t = _trainer(synthetic_root, str(tmp_path / "graphs"), "OPTIM.MAX_EPOCH", "1")
    t.cuda_graph_steps = True  # as on a GPU with MODEL.COMPILE_MODE reduce-overhead
    t.train()
    assert len(calls) == len(t.train_loader_x) > 0  # TRAIN.COUNT_ITER train_x: one mark per step


def test_a_misspelt_compile_mode_is_a_user_error(synthetic_root, tmp_path):
    with pytest.raises(UserError, match="MODEL.COMPILE_MODE must be one of default, .*reduce-overhead.*"
                                        "got 'reduce_overhead'"):
        _trainer(synthetic_root, str(tmp_path), "MODEL.COMPILE", "True", "MODEL.COMPILE_MODE", "reduce_overhead")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_steps_train_and_evaluate_like_eager_steps(synthetic_root, tmp_path, compile_with, full_fp32):
    """The real compiler with MODEL.COMPILE_MODE reduce-overhead: the first step equals the eager one, and
    a whole run (the loop's logging of every step's losses, evaluation) never reads an output that a
    later replay overwrote (torch raises on that)."""
    compile_with("inductor")
    opts = ["TRAIN.PRECISION", "fp32", "DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR",
            str(tmp_path / "cache"), "DATALOADER.CACHE.ON_DEVICE", "True", "OPTIM.MAX_EPOCH", "1"]
    eager = _trainer(synthetic_root, str(tmp_path / "eager"), *opts)
    graphs = _trainer(synthetic_root, str(tmp_path / "graphs"), *opts, "MODEL.COMPILE", "True",
                      "MODEL.COMPILE_MODE", "reduce-overhead")
    assert graphs.cuda_graph_steps and not eager.cuda_graph_steps
    graphs.begin_step()
    _assert_same_step(eager, _one_step(eager), graphs, _one_step(graphs), rel=1e-4, abs_=1e-5)
    graphs.train()
    results = json.load(open(tmp_path / "graphs" / "results.json"))
    assert 0 <= results["metrics"]["auc_u"] <= 100 and 0 <= results["metrics"]["acc_s"] <= 100
    logged = [json.loads(line) for line in open(tmp_path / "graphs" / "metrics.jsonl")]
    losses = [r["train/loss_ps"] for r in logged if "train/loss_ps" in r]
    assert len(losses) >= 2 and all(math.isfinite(v) for v in losses) and len(set(losses)) > 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="host-device synchronisation is a GPU matter")
def test_fast_path_step_never_waits_for_the_gpu(synthetic_root, tmp_path):
    """The fast path's step (batches gathered from the device-resident cache and augmented there, bf16,
    fused AdamW) queues its work without waiting for the GPU: torch raises on any synchronising call
    (``.item()``, a blocking copy, a data-dependent shape) while the sync debug mode is "error"."""
    t = _trainer(synthetic_root, str(tmp_path), "DATALOADER.CACHE.ENABLED", "True", "DATALOADER.CACHE.DIR",
                 str(tmp_path / "cache"), "DATALOADER.CACHE.ON_DEVICE", "True", "OPTIM.FUSED", "True")
    t.set_model_mode("train")
    xs, us = iter(t.train_loader_x), iter(t.train_loader_u)
    t.forward_backward(next(xs), next(us))  # the first step creates the optimiser's state
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(2):
            t.begin_step()
            t.forward_backward(next(xs), next(us))
    finally:
        torch.cuda.set_sync_debug_mode("default")
