"""Pre-train the tiny CLIP on synthetic face/caption pairs: a stand-in for OpenAI's pretrained CLIP.

PromptEmo and every comparison method start from a *pretrained* CLIP: its text encoder already maps
"happiness" and "anger" to different places and its image encoder already sees faces. The ``tiny``
backbone has random weights and has neither (its class prompts are nearly parallel), so on a CPU no CLIP
method can show what it does. This script gives the tiny architecture what web pre-training gives the
real one, on a CPU in a few minutes, and writes it as a checkpoint file that ``train.py`` loads
through the same path as a downloaded ``ViT-B-32.pt`` (``MODEL.BACKBONE.NAME path/to/file.pt``).

    python scripts/pretrain_tiny_clip.py --unpack --out data/tiny-clip-synthetic.pt   # the shipped file, seconds
    python scripts/pretrain_tiny_clip.py --out data/tiny-clip-synthetic.pt            # pre-train, ~3.5 min on 2 cores
    python scripts/pretrain_tiny_clip.py --out assets/tiny-clip-synthetic.pt.gz --force   # remake the shipped file

The repository ships the result, ``assets/tiny-clip-synthetic.pt.gz`` (made by the last command, 2.7 MB),
with its sha256 beside it (``.sha256``, checked by ``--unpack``), so that the demo does not pre-train on
every new clone. A ``.gz`` output is gzip-compressed and gets that checksum file; any other is the plain
checkpoint. Both hold the same compact state dict (:func:`compact_state_dict`: fp16, the token rows that
no caption reached set to zero).

The pre-training pool is kept apart from the benchmark, as the web is apart from RAF-DB:
- its own look, ``synth_web`` (none of the four benchmark domains' styles), and its own random streams;
- web-like captions, not labels: many templates and synonyms, descriptions of visible facial behaviour,
  a share of captions that say nothing about the expression and a share that name the wrong one;
- CLIP's symmetric contrastive loss between images and the distinct captions of the batch.
So zero-shot with it is better than chance but far from what training on the sources can reach, which
is the situation the paper's methods are built for. Everything random is seeded by ``--seed``.

Reproducibility: pre-training runs on two CPU threads (``PRETRAIN_THREADS``), whatever the machine: the
kernels split their sums by thread count, and 324 steps of training turn last-bit differences into other
weights. Measured on a 2-core machine: the demo's two earlier pre-trainings (torch's default there, two
threads) and one of this script wrote the same weights (the shipped file is that pre-training, stored
compact); two 1-thread runs wrote the same weights as each other, not as those (and a weaker CLIP: 25.5%
zero-shot accuracy against 32.5%). On another CPU or torch build expect the same architecture and a
similar zero-shot accuracy, not the same bytes.
"""
from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import sys
import time
from dataclasses import replace

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from datasets.classes import CANONICAL_CLASSES
from datasets.synthetic import DOMAIN_STYLES, render_face
from engine.config.defaults import CLIP_PIXEL_MEAN, CLIP_PIXEL_STD
from engine.data.fast import DeviceAugment
from engine.modeling.clip_backbone import CLIP, TINY_CLIP_ARCH, tokenize
from engine.utils.errors import UserError, run_command
from engine.utils.tools import atomic_write_bytes

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: The pre-trained tiny CLIP shipped with the repository, and its checksum file (``sha256sum`` format).
SHIPPED = os.path.join(REPO, "assets", "tiny-clip-synthetic.pt.gz")
CHECKSUM_SUFFIX = ".sha256"
#: CPU threads of the pre-training (see the module docstring on reproducibility)
PRETRAIN_THREADS = 2

#: The pre-training look: between the benchmark's colour and wild domains, but none of them.
WEB_STYLE = replace(DOMAIN_STYLES["synth_color"], name="synth_web", n_background_shapes=(4, 14), scale=(0.8, 1.2),
                    rotation_deg=15.0, shift=0.1, yaw=0.45, contrast=(0.75, 1.25), brightness=(-20.0, 20.0),
                    color_jitter=0.1, noise_std=(1.0, 10.0), light_gradient=(0.0, 0.3), occlusion_prob=0.1)
WEB_STYLE_GRAY = replace(WEB_STYLE, name="synth_web_gray", grayscale=True, desaturate=1.0, color_jitter=0.0)

# Words a caption may use for each expression (the class names themselves included, as on the web).
ADJECTIVES = {
    "surprise": ("surprised", "astonished", "amazed", "startled"),
    "fear": ("afraid", "scared", "fearful", "frightened"),
    "disgust": ("disgusted", "repulsed", "grossed out"),
    "happiness": ("happy", "smiling", "joyful", "cheerful"),
    "sadness": ("sad", "unhappy", "sorrowful", "gloomy"),
    "anger": ("angry", "furious", "mad", "annoyed"),
    "neutral": ("neutral", "calm", "expressionless", "blank"),
}
NOUNS = {c: (c,) for c in CANONICAL_CLASSES} | {"neutral": ("neutral", "no emotion", "a neutral expression")}
# Visible behaviour, in everyday words (what a caption writer sees, not FACS codes).
BEHAVIOUR = {
    "surprise": ("raised eyebrows", "an open mouth", "wide open eyes", "a dropped jaw", "a raised forehead"),
    "fear": ("wide staring eyes", "raised inner brows", "stretched lips", "tense eyelids", "brows pulled together"),
    "disgust": ("a wrinkled nose", "a raised upper lip", "lowered eyebrows", "narrowed eyes", "a sneer"),
    "happiness": ("a smile", "raised cheeks", "lip corners pulled up", "visible teeth", "a grin"),
    "sadness": ("lip corners pulled down", "drooping eyelids", "inner brows raised", "a downcast gaze", "a frown"),
    "anger": ("a frown", "eyebrows drawn together", "pressed lips", "a hard stare", "lowered brows"),
    "neutral": ("relaxed eyebrows", "closed lips", "a relaxed face", "a calm look", "a still mouth"),
}
ADJ_TEMPLATES = ("a photo of a {} person.", "a {} face.", "a close-up of someone looking {}.", "a portrait of a {} man.",
                 "a portrait of a {} woman.", "a picture of a {} face.", "someone who looks {}.")
NOUN_TEMPLATES = ("a face showing {}.", "an expression of {}.", "a photo of {}.", "{} on a person's face.",
                  "a portrait showing {}.")
BEHAVIOUR_TEMPLATES = ("a face with {}.", "a person with {}.", "a photo of someone with {}.")
GENERIC_CAPTIONS = ("a photo of a person.", "a face.", "a portrait.", "a picture of someone.", "a close-up photo.",
                    "a person looking at the camera.", "a headshot.", "profile picture.")


GENERIC = len(CANONICAL_CLASSES)  # the meaning of a caption that names no expression


def caption_for(label: int, rng: np.random.Generator, generic_p: float, wrong_p: float) -> tuple[str, int]:
    """One web-like caption of a face of class ``label`` and what it means (the class it names, or
    :data:`GENERIC`): generic with probability ``generic_p``, naming another expression with probability
    ``wrong_p``, else about the face's own expression."""
    if rng.random() < generic_p:
        return GENERIC_CAPTIONS[rng.integers(len(GENERIC_CAPTIONS))], GENERIC
    if rng.random() < wrong_p:
        label = int((label + rng.integers(1, len(CANONICAL_CLASSES))) % len(CANONICAL_CLASSES))
    name = CANONICAL_CLASSES[label]
    kind = rng.random()
    if kind < 0.4:
        words, templates = ADJECTIVES[name], ADJ_TEMPLATES
    elif kind < 0.7:
        words, templates = NOUNS[name], NOUN_TEMPLATES
    else:
        picks = rng.choice(len(BEHAVIOUR[name]), size=2, replace=False)
        phrase = " and ".join(BEHAVIOUR[name][i] for i in picks)
        return BEHAVIOUR_TEMPLATES[rng.integers(len(BEHAVIOUR_TEMPLATES))].format(phrase), label
    return templates[rng.integers(len(templates))].format(words[rng.integers(len(words))]), label


def render_pool(per_class: int, size: int, seed: int, gray_p: float = 0.25) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` faces of each class in the web style: uint8 ``(N, size, size, 3)`` and labels."""
    images, labels = [], []
    jobs = [(label, i) for label in range(len(CANONICAL_CLASSES)) for i in range(per_class)]
    for label, i in tqdm(jobs, desc="render pre-training faces", unit="img", leave=False):
        rng = np.random.default_rng(np.random.SeedSequence([seed, 7_919, label, i]))
        style = WEB_STYLE_GRAY if rng.random() < gray_p else WEB_STYLE
        images.append(np.asarray(render_face(label, style, rng, size=size)))
        labels.append(label)
    return np.stack(images), np.asarray(labels)


def contrastive_loss(image_features: torch.Tensor, text_features: torch.Tensor, image_meaning: torch.Tensor,
                     text_meaning: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """CLIP's symmetric contrastive loss over the batch's distinct captions, where captions that mean the
    same (name the same expression, or none) count as one: image i's positives are the captions with
    the meaning of its own caption, a caption's positives are the images whose caption means the same
    (uniform soft targets). Without this merging, twenty phrasings of "happy" are negatives of each
    other and a CLIP this small collapses to one feature for every input."""
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).t()
    positive = (image_meaning[:, None] == text_meaning[None, :]).float()  # (images, captions)
    image_to_text = -(positive / positive.sum(1, keepdim=True) * logits.log_softmax(1)).sum(1).mean()
    text_to_image = -(positive.t() / positive.sum(0)[:, None] * logits.t().log_softmax(1)).sum(1).mean()
    return (image_to_text + text_to_image) / 2


#: CLIP's ResNet image encoder (ModifiedResNet, as in RN50) at 64 px and width 16, with the tiny text
#: encoder. Measured on this pool within a few CPU minutes: the 32 px tiny ViT and this ResNet at 32 px
#: stayed at chance zero-shot (both encoders ended with one feature for every input); this one reaches
#: 28-38% zero-shot accuracy (7 classes) on the four benchmark domains.
PRETRAINED_ARCH = dict(TINY_CLIP_ARCH, image_resolution=64, vision_layers=(1, 1, 1, 1), vision_width=16,
                       vision_patch_size=None)


def pretrain(per_class: int = 1000, epochs: int = 12, batch_size: int = 256, lr: float = 2e-3, seed: int = 0,
             generic_p: float = 0.1, wrong_p: float = 0.05,
             arch: dict | None = None) -> tuple[torch.nn.Module, torch.Tensor]:
    """The tiny CLIP (random init from ``seed``) after contrastive pre-training on the web pool, and which
    rows of its token embedding training reached (a bool per token: some step's gradient was non-zero)."""
    arch = arch or PRETRAINED_ARCH
    size = arch["image_resolution"]
    images, labels = render_pool(per_class, size, seed)
    torch.manual_seed(seed)
    model = CLIP(**arch).float().train()
    augment = DeviceAugment((size, size), train=True, random_resized_crop=True, scale=(0.6, 1.0), flip=True,
                            mean=CLIP_PIXEL_MEAN, std=CLIP_PIXEL_STD)
    steps_per_epoch = len(images) // batch_size
    optim = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    # Linear warm-up over the first 20 steps, then constant: a decaying schedule this short stops
    # before the two encoders have left the collapsed start (measured: zero-shot at chance).
    sched = torch.optim.lr_scheduler.LambdaLR(optim, lambda step: min(1.0, (step + 1) / 20))
    rng = np.random.default_rng(np.random.SeedSequence([seed, 104_729]))
    images_t = torch.from_numpy(images)
    trained_rows = torch.zeros(model.token_embedding.num_embeddings, dtype=torch.bool)
    bar = tqdm(total=epochs * steps_per_epoch, desc="pre-train tiny CLIP", unit="step")
    for _ in range(epochs):
        order = rng.permutation(len(images))
        for step in range(steps_per_epoch):
            idx = order[step * batch_size:(step + 1) * batch_size]
            pairs = [caption_for(int(labels[i]), rng, generic_p, wrong_p) for i in idx]
            captions = dict(pairs)  # distinct caption -> its meaning
            image_meaning = torch.tensor([meaning for _, meaning in pairs])
            image_features = model.encode_image(augment(images_t[idx]))
            text_features = model.encode_text(tokenize(list(captions)))
            loss = contrastive_loss(image_features, text_features, image_meaning, torch.tensor(list(captions.values())),
                                    model.logit_scale.exp())
            optim.zero_grad(set_to_none=True)
            loss.backward()
            trained_rows |= model.token_embedding.weight.grad.ne(0).any(1)
            optim.step()
            sched.step()
            with torch.no_grad():
                model.logit_scale.clamp_(0, np.log(100.0))
            bar.update()
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    return model.eval(), trained_rows


def compact_state_dict(model: torch.nn.Module, trained_rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """The state dict as written: fp16, as OpenAI's released CLIP files (``load_clip`` casts to fp32), with
    the token embedding's rows that pre-training never reached (``~trained_rows``) set to zero. Such a row
    holds only its random initialisation shrunk by weight decay, which means nothing to the text encoder
    (a word no caption contained: about a third of the words of ``configs/descriptions/facs.json``); those
    49k x 64 random numbers were two thirds of the file and do not compress, zeros do."""
    state = {k: v.half() if v.is_floating_point() else v for k, v in model.state_dict().items()}
    state["token_embedding.weight"] = state["token_embedding.weight"].masked_fill(~trained_rows[:, None], 0)
    return state


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def write_checkpoint(path: str, state: dict[str, torch.Tensor]) -> None:
    """``state`` to ``path`` atomically (never a half-written file under the real name); a ``.gz`` path is
    gzip-compressed (with a fixed header, so equal weights give equal bytes) and gets its sha256 file."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    data = buffer.getvalue()
    if path.endswith(".gz"):
        data = gzip.compress(data, compresslevel=9, mtime=0)
    atomic_write_bytes(path, data)
    if path.endswith(".gz"):
        atomic_write_bytes(path + CHECKSUM_SUFFIX, f"{sha256_hex(data)}  {os.path.basename(path)}\n".encode())


def read_shipped(path: str = SHIPPED) -> bytes:
    """The checkpoint inside the gzip file ``path``, after checking the file against its sha256 file."""
    try:
        with open(path, "rb") as f:
            data = f.read()
        with open(path + CHECKSUM_SUFFIX, encoding="utf-8") as f:
            expected = f.read().split()[0]
    except (OSError, IndexError) as e:
        raise UserError(f"cannot read the shipped tiny CLIP {path} and its {CHECKSUM_SUFFIX} file ({e}); restore them "
                        f"with git checkout, or pre-train without --unpack") from None
    found = sha256_hex(data)
    if found != expected:
        raise UserError(f"{path} does not match its checksum (sha256 {found}, expected {expected}): a damaged copy or "
                        f"a Git LFS pointer; restore it with git checkout, or pre-train without --unpack")
    return gzip.decompress(data)


def unpack(out: str, shipped: str = SHIPPED, force: bool = False) -> None:
    """Write the shipped checkpoint to ``out`` (seconds). An existing ``out`` is kept unless ``force``; one
    that is not the shipped checkpoint is named as such, since the demo's figures were made with that one."""
    data = read_shipped(shipped)
    if os.path.exists(out) and not force:
        with open(out, "rb") as f:
            same = sha256_hex(f.read()) == sha256_hex(data)
        print(f"{out} exists; nothing to do" + ("" if same else f" (it is not {os.path.relpath(shipped)}: another "
                                                                 f"pre-training; --force replaces it)"))
        return
    os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
    atomic_write_bytes(out, data)
    print(f"wrote {out} from {os.path.relpath(shipped)}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="checkpoint file to write (a CLIP state dict)")
    p.add_argument("--per-class", type=int, default=1000, help="pre-training faces per expression")
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="overwrite an existing file")
    p.add_argument("--unpack", nargs="?", const=SHIPPED, metavar="GZ",
                   help=f"write the shipped pre-trained file instead of pre-training (default "
                        f"{os.path.relpath(SHIPPED)}, checked against its {CHECKSUM_SUFFIX} file)")
    args = p.parse_args(argv)
    if os.path.isdir(args.out):
        raise UserError(f"--out {args.out} is a folder; expected a file path such as data/tiny-clip-synthetic.pt")
    if args.unpack:
        unpack(args.out, args.unpack, args.force)
        return
    if os.path.exists(args.out) and not args.force:
        print(f"{args.out} exists; nothing to do (--force rebuilds it)")
        return
    if args.per_class * len(CANONICAL_CLASSES) < args.batch_size:
        raise UserError(f"--per-class {args.per_class} gives {args.per_class * len(CANONICAL_CLASSES)} faces, fewer than one "
                        f"batch (--batch-size {args.batch_size})")
    start = time.time()
    torch.set_num_threads(PRETRAIN_THREADS)  # the same bytes on the same machine whatever its core count
    model, trained_rows = pretrain(args.per_class, args.epochs, args.batch_size, seed=args.seed)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    write_checkpoint(args.out, compact_state_dict(model, trained_rows))
    print(f"wrote {args.out} ({time.time() - start:.0f} s)")


if __name__ == "__main__":
    sys.exit(run_command(main))
