"""The shared CLIP backbone: tiny model through the file path a real checkpoint takes, clear errors,
and the prompt text encoder agreeing with CLIP's own encode_text."""
from __future__ import annotations

import pytest
import torch

from engine.config import get_cfg_default
from engine.modeling.clip_backbone import (TINY_CLIP_ARCH, build_tiny_clip, check_input_size, load_clip,
                                           token_length, tokenize)
from engine.modeling.clip_text import TextEncoder, encode_sentences
from engine.utils.errors import UserError


def test_tiny_clip_round_trips_through_a_checkpoint_file(tiny_clip_file):
    loaded = load_clip(tiny_clip_file)  # clip.load(path) -> build_model(state_dict), as for ViT-B-32.pt
    reference = build_tiny_clip(seed=0)
    assert loaded.visual.input_resolution == TINY_CLIP_ARCH["image_resolution"]
    assert next(loaded.parameters()).dtype == torch.float32
    for (name, a), (_, b) in zip(loaded.state_dict().items(), reference.state_dict().items()):
        assert torch.equal(a, b), name
    assert loaded.logit_scale.exp().item() == pytest.approx(1 / 0.07)  # CLIP's value at initialisation
    image = torch.randn(2, 3, 32, 32)
    assert torch.allclose(loaded.encode_image(image), reference.encode_image(image), atol=1e-6)


def test_missing_and_corrupt_weight_files_are_one_line_errors(tmp_path):
    with pytest.raises(UserError, match="CLIP weights file not found: .*nothere.pt"):
        load_clip(str(tmp_path / "nothere.pt"))
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"this is not a checkpoint" * 10)
    with pytest.raises(UserError, match="cannot load CLIP weights from .*corrupt.pt") as e:
        load_clip(str(corrupt))
    assert "\n" not in str(e.value)


def test_truncated_real_layout_file(tiny_clip_file, tmp_path):
    data = open(tiny_clip_file, "rb").read()
    cut = tmp_path / "cut.pt"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match="cannot load CLIP weights"):
        load_clip(str(cut))


def test_input_size_must_match_backbone():
    cfg = get_cfg_default()
    cfg.MODEL.BACKBONE.NAME = "tiny"
    cfg.INPUT.SIZE = (224, 224)
    with pytest.raises(UserError, match=r"takes 32x32 images; set INPUT.SIZE \(32, 32\)"):
        check_input_size(cfg, build_tiny_clip(seed=0))


def test_text_encoder_on_token_embeddings_equals_encode_text():
    model = build_tiny_clip(seed=0)
    tokens = tokenize(["a photo of a face showing anger.", "This expression is not happiness."])
    expected = model.encode_text(tokens)
    got = TextEncoder(model)(model.token_embedding(tokens), tokens)
    assert torch.allclose(got, expected, atol=1e-5)
    feats = encode_sentences(model, ["a b c"])
    assert feats.shape == (1, TINY_CLIP_ARCH["embed_dim"]) and torch.allclose(feats.norm(dim=-1), torch.ones(1))


def test_tokenizer_rejects_prompts_longer_than_the_context():
    assert token_length("a photo of a face") == 5
    with pytest.raises(UserError, match="too long"):
        tokenize([" ".join(["word"] * 80)])


def test_torchscript_archive_like_openai_release(tmp_path):
    from engine.modeling.clip_backbone import save_tiny_clip

    path = save_tiny_clip(str(tmp_path / "tiny-jit.pt"), seed=0, torchscript=True)
    loaded, reference = load_clip(path), build_tiny_clip(seed=0)
    tokens = tokenize(["a photo of a face showing fear."])
    assert torch.allclose(loaded.encode_text(tokens), reference.encode_text(tokens), atol=1e-5)


@pytest.mark.parametrize("position", ["end", "middle", "front"])
def test_prompt_learner_places_context_and_text_like_coop(position):
    from engine.modeling.clip_text import PromptLearner

    model = build_tiny_clip(seed=0)
    texts = ["anger.", "a very happy face."]
    learner = PromptLearner(model, texts, n_ctx=4, class_specific=True, position=position)
    prompts = learner()
    assert prompts.shape == (2, 77, 64)
    emb = model.token_embedding(tokenize(texts)).float()  # [SOS] text [EOS] ...
    n = token_length(texts[1])
    ctx = learner.ctx[1]
    start = {"end": 5, "middle": 3, "front": 1}[position]  # where the text starts
    assert torch.equal(prompts[1, start:start + n], emb[1, 1:1 + n])
    if position == "end":
        assert torch.equal(prompts[1, 1:5], ctx)
    # the end token sits where tokenized_prompts.argmax says
    eot = learner.tokenized_prompts[1].argmax().item()
    assert eot == 1 + 4 + n and torch.equal(prompts[1, eot], emb[1, 1 + n])
    # only the context is a parameter, and it is all the state that is saved
    assert [k for k in learner.state_dict()] == ["ctx"]


def test_prompt_learner_without_context_equals_encode_text():
    from engine.modeling.clip_text import PromptLearner

    model = build_tiny_clip(seed=0)
    learner = PromptLearner(model, ["a photo of anger."], n_ctx=0)
    assert list(learner.parameters()) == []
    got = TextEncoder(model)(learner(), learner.tokenized_prompts)
    assert torch.allclose(got, model.encode_text(tokenize(["a photo of anger."])), atol=1e-5)


def test_prompt_learner_rejects_text_too_long_for_context():
    from engine.modeling.clip_text import PromptLearner

    text = " ".join(["smile"] * 68)
    with pytest.raises(UserError, match="'happiness' has 68 tokens; with 8 context vectors it must have at most 67"):
        PromptLearner(build_tiny_clip(seed=0), [text], n_ctx=8, names=["happiness"])


def test_prompt_learner_ctx_init_from_words_like_coop():
    from engine.modeling.clip_text import PromptLearner

    model = build_tiny_clip(seed=0)
    learner = PromptLearner(model, ["anger.", "fear."], n_ctx=16, init_words="a photo of a")
    assert learner.ctx.shape == (4, 64)  # n_ctx follows the words
    # with the initial context the prompt is exactly the sentence "a photo of a anger."
    got = TextEncoder(model)(learner(), learner.tokenized_prompts)
    assert torch.allclose(got[0], model.encode_text(tokenize(["a photo of a anger."]))[0], atol=1e-5)


@pytest.mark.parametrize("size", [32, 34])  # 34: a remainder the strided convolution drops too
def test_patch_embed_matmul_equals_the_convolution_and_its_gradients(size):
    from engine.modeling.clip_backbone import PatchEmbedMatmul

    torch.manual_seed(0)
    conv = torch.nn.Conv2d(3, 16, kernel_size=8, stride=8, bias=False)
    matmul = PatchEmbedMatmul.replacing(conv)
    assert matmul.weight is conv.weight  # shared parameter: same checkpoint key, same optimiser entry
    x = torch.randn(2, 3, size, size, requires_grad=True)
    expected, got = conv(x), matmul(x)
    assert got.shape == expected.shape == (2, 16, 4, 4)
    assert torch.allclose(got, expected, atol=1e-5)
    upstream = torch.randn_like(expected)
    grad_w_conv, grad_x_conv = torch.autograd.grad(expected, (conv.weight, x), upstream)
    grad_w_mm, grad_x_mm = torch.autograd.grad(got, (conv.weight, x), upstream)
    assert torch.allclose(grad_w_mm, grad_w_conv, atol=1e-4)
    assert torch.allclose(grad_x_mm, grad_x_conv, atol=1e-5)
    with pytest.raises(ValueError, match="not a non-overlapping patch convolution"):
        PatchEmbedMatmul.replacing(torch.nn.Conv2d(3, 16, kernel_size=3, stride=2))


def test_clip_with_patch_embed_matmul_keeps_keys_and_features(tiny_clip_file):
    from engine.modeling.clip_backbone import PatchEmbedMatmul, use_patch_embed_matmul

    reference = load_clip(tiny_clip_file)
    swapped = use_patch_embed_matmul(load_clip(tiny_clip_file))
    assert isinstance(swapped.visual.conv1, PatchEmbedMatmul)
    assert list(swapped.state_dict()) == list(reference.state_dict())
    image = torch.randn(3, 3, 32, 32)
    assert torch.allclose(swapped.encode_image(image), reference.encode_image(image), atol=1e-5)


def test_class_token_last_block_keeps_keys_features_and_gradients(tiny_clip_file):
    """MODEL.CLS_ONLY_LAST_BLOCK: the ViT's last block computes the class token alone, which is all the
    image feature reads, so features and every parameter's gradient stay those of CLIP's forward."""
    from clip.model import CLIP

    from engine.modeling.clip_backbone import ClassTokenBlock, use_class_token_last_block

    reference = load_clip(tiny_clip_file)
    swapped = use_class_token_last_block(use_class_token_last_block(load_clip(tiny_clip_file)))  # idempotent
    blocks = swapped.visual.transformer.resblocks
    assert isinstance(blocks[-1], ClassTokenBlock) and not any(isinstance(b, ClassTokenBlock) for b in blocks[:-1])
    assert list(swapped.state_dict()) == list(reference.state_dict())
    image = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    f_ref, f_new = reference.encode_image(image), swapped.encode_image(image)
    assert f_new.shape == f_ref.shape == (3, TINY_CLIP_ARCH["embed_dim"])
    assert torch.allclose(f_new, f_ref, atol=1e-5)
    upstream = torch.randn_like(f_ref)
    (f_ref * upstream).sum().backward()
    (f_new * upstream).sum().backward()
    grads = dict(swapped.visual.named_parameters())
    for name, param in reference.visual.named_parameters():
        assert torch.allclose(grads[name].grad, param.grad, atol=1e-5), name
    # the text encoder's blocks are causally masked and read the end-of-text token: refused
    with pytest.raises(ValueError, match="masked attention block"):
        ClassTokenBlock.replacing(reference.transformer.resblocks[0])
    # a ResNet image encoder (its attention pooling already queries one token) is left as it is
    resnet = CLIP(**dict(TINY_CLIP_ARCH, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16))
    modules = list(resnet.visual.modules())
    assert use_class_token_last_block(resnet) is resnet and list(resnet.visual.modules()) == modules


@pytest.mark.parametrize("enabled", [True, False])
def test_build_clip_for_applies_cls_only_last_block_from_the_config(enabled):
    from engine.modeling.clip_backbone import ClassTokenBlock, build_clip_for

    cfg = get_cfg_default()
    assert cfg.MODEL.CLS_ONLY_LAST_BLOCK  # on by default: same features, less work
    cfg.MODEL.BACKBONE.NAME, cfg.INPUT.SIZE, cfg.MODEL.CLS_ONLY_LAST_BLOCK = "tiny", (32, 32), enabled
    model = build_clip_for(cfg, "cpu")
    assert isinstance(model.visual.transformer.resblocks[-1], ClassTokenBlock) is enabled
