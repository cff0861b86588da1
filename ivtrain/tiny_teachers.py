"""Write tiny teachers for CPU runs: a tiny CLIP image tower and a tiny VideoMAE (InternVideo2 stage 1), a tiny
SigLIP image tower and a tiny ModernBERT (InternVideo-Next's teacher and predictor).

`python -m ivtrain.tiny_teachers OUT_DIR [--shards S --steps N]` writes OUT_DIR/tiny_clip and
OUT_DIR/tiny_videomae. With --shards, the VideoMAE is first trained as a masked-pixel model on
those shards (VideoMAE pretraining with pixel regression; the default mask hides the second half
of the clip, so reconstructing it needs the motion; `tube` is VideoMAE's random tube mask), so
that its features carry real motion information; the CLIP tower stays randomly initialized.
"""
from __future__ import annotations

import argparse
import copy
from dataclasses import replace
from pathlib import Path

import torch

from ivtrain.config import DataConfig
from ivtrain.data.transforms import normalize


def save_tiny_clip_teacher(path: str | Path, image_size: int = 32, patch_size: int = 8, hidden: int = 48,
                           layers: int = 3, projection_dim: int = 32, seed: int = 0) -> Path:
    """Write a randomly initialized tiny CLIP image tower (with projection) to `path` (tests, demos)."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                           intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=4,
                           projection_dim=projection_dim)
    CLIPVisionModelWithProjection(cfg).save_pretrained(path)
    return Path(path)


def save_tiny_siglip_teacher(path: str | Path, image_size: int = 64, patch_size: int = 16, hidden: int = 48,
                             layers: int = 4, seed: int = 0) -> Path:
    """Write a randomly initialized tiny SigLIP image tower (with its attention-pooling head) to `path`: 64 px at
    patch 16 is the 4 x 4 grid of the tiny student's 32 px at patch 8, as SigLIP2's 256 px at patch 16 is the
    16 x 16 of a 224 px, patch 14 student."""
    from transformers import SiglipVisionConfig, SiglipVisionModel

    torch.manual_seed(seed)
    cfg = SiglipVisionConfig(image_size=image_size, patch_size=patch_size, hidden_size=hidden,
                             intermediate_size=hidden * 2, num_hidden_layers=layers, num_attention_heads=4)
    SiglipVisionModel(cfg).save_pretrained(path)
    return Path(path)


def save_tiny_modernbert(path: str | Path, hidden: int = 64, layers: int = 6, heads: int = 4,
                         local_attention: int = 8, seed: int = 0) -> Path:
    """Write a randomly initialized tiny ModernBERT masked LM to `path` (the predictor's source): global attention
    every third layer, the others a window of local_attention / 2 tokens each side (8 -> 4: smaller than the tiny
    student's sequence of 4 CLS + 64 tokens, so the window matters)."""
    from transformers import ModernBertConfig, ModernBertForMaskedLM

    torch.manual_seed(seed)
    cfg = ModernBertConfig(vocab_size=64, hidden_size=hidden, intermediate_size=hidden * 3 // 2,
                           num_hidden_layers=layers, num_attention_heads=heads, local_attention=local_attention,
                           global_attn_every_n_layers=3, max_position_embeddings=512, pad_token_id=0,
                           bos_token_id=1, eos_token_id=2, cls_token_id=1, sep_token_id=2)
    ModernBertForMaskedLM(cfg).save_pretrained(path)
    return Path(path)


# the tiny text tower's vocabulary: the words of the synthetic captions (bench/mixture_sets.py, the stage-2 learning
# check), then letters and digits as word pieces, so that any lowercase text (the demo's noise captions) tokenizes
TINY_WORDS = ("a an the with and of over on in moves moving left right up down red green blue yellow white square "
              "disc circle shape shapes two dark ground slowly quickly tone low high pitch sound silent").split()


def save_tiny_bert(path: str | Path, hidden: int = 48, layers: int = 4, heads: int = 4, seed: int = 0,
                   vocab_size: int = 0) -> Path:
    """Write a randomly initialized BERT (masked-LM) with a word-piece tokenizer to `path` (tests, demos; larger
    sizes and a BERT-sized vocabulary `vocab_size` for benchmarks)."""
    import string

    from transformers import BertConfig, BertForMaskedLM, BertTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    chars = string.ascii_lowercase + string.digits
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS, *chars, *(f"##{c}" for c in chars),
             *string.punctuation]
    (path / "vocab.txt").write_text("\n".join(dict.fromkeys(vocab)) + "\n")
    tokenizer = BertTokenizerFast(vocab=str(path / "vocab.txt"))   # transformers 5 ignores vocab_file=
    torch.manual_seed(seed)
    BertForMaskedLM(BertConfig(vocab_size=max(vocab_size, len(tokenizer)), hidden_size=hidden,
                               num_hidden_layers=layers, num_attention_heads=heads,
                               intermediate_size=(4 if vocab_size else 2) * hidden,
                               max_position_embeddings=512 if vocab_size else 64)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def tiny_videomae_config(image_size: int = 32, patch_size: int = 8, num_frames: int = 8, hidden: int = 48,
                         layers: int = 3):
    from transformers import VideoMAEConfig

    return VideoMAEConfig(image_size=image_size, patch_size=patch_size, num_frames=num_frames, tubelet_size=2,
                          hidden_size=hidden, intermediate_size=hidden * 2, num_hidden_layers=layers,
                          num_attention_heads=4, decoder_hidden_size=64, decoder_intermediate_size=128,
                          decoder_num_hidden_layers=2, decoder_num_attention_heads=4,
                          use_mean_pooling=False,  # keep the final LayerNorm, as the released pretraining encoder
                          norm_pix_loss=False)  # flat synthetic patches make per-patch normalized targets noise


def save_tiny_videomae_teacher(path: str | Path, seed: int = 0, **kwargs) -> Path:
    """Write a randomly initialized tiny VideoMAE to `path` (tests, demos)."""
    from transformers import VideoMAEModel

    torch.manual_seed(seed)
    VideoMAEModel(tiny_videomae_config(**kwargs)).save_pretrained(path)
    return Path(path)


def train_tiny_videomae(out: Path, shards: str | None, steps: int, image_size: int = 32, frames: int = 8,
                        batch_size: int = 8, lr: float = 1.5e-3, seed: int = 0, mask_ratio: float = 0.75,
                        mask: str = "future", hidden: int = 48, layers: int = 3, augment: bool = True,
                        finetune_steps: int = 0, finetune_batch_size: int = 16,
                        eval_shards: str | None = None) -> dict:
    """Train (or just initialize, when shards is None) a tiny VideoMAE and save its encoder to `out`.

    With `finetune_steps`, the encoder is then fine-tuned on the shards' labels; with `eval_shards`
    too, the fine-tuned classifier's accuracy there is reported (what the teacher knows)."""
    from transformers import VideoMAEForPreTraining

    from ivtrain.data.masking import tube_mask
    from ivtrain.data.loader import video_loader

    torch.manual_seed(seed)
    cfg = tiny_videomae_config(image_size=image_size, num_frames=frames, hidden=hidden, layers=layers)
    model = VideoMAEForPreTraining(cfg)
    info = {"first_loss": None, "last_loss": None, "steps": 0}
    if shards:
        data = DataConfig(shards=shards, num_frames=frames, image_size=image_size,
                          batch_size=batch_size, num_workers=2, train=augment)
        loader, _ = video_loader(data, frames, seed=seed)
        grid = image_size // cfg.patch_size

        def masked_pixel_loss(video, batch):
            video = video.transpose(1, 2)  # (B, T, 3, H, W)
            if mask == "future":  # hide the second half of the clip: predicting it needs the motion
                visible = torch.zeros(video.shape[0], frames // 2, grid * grid, dtype=torch.bool)
                visible[:, : frames // 4] = True
                visible = visible.reshape(video.shape[0], -1)
            else:
                visible = tube_mask(video.shape[0], frames // 2, grid * grid, mask_ratio)
            return model(pixel_values=video, bool_masked_pos=~visible).loss

        info = fit(model, loader, data, masked_pixel_loss, steps, lr)
    encoder = model.videomae
    if finetune_steps:
        encoder, info["finetune"] = finetune_on_labels(encoder, cfg, shards, finetune_steps, image_size, frames,
                                                       finetune_batch_size, lr, seed, augment, eval_shards)
    encoder.save_pretrained(out)
    return info


def finetune_on_labels(encoder, cfg, shards: str, steps: int, image_size: int, frames: int, batch_size: int,
                       lr: float, seed: int, augment: bool, eval_shards: str | None = None):
    """Fine-tune the VideoMAE encoder as a classifier of the shards' `label` (mean pooling + linear), as
    InternVideo2's motion teacher (VideoMAEv2-g) is fine-tuned on K710. Returns (encoder, info)."""
    from transformers import VideoMAEForVideoClassification

    from ivtrain.data.loader import video_loader

    data = DataConfig(shards=shards, num_frames=frames, image_size=image_size,
                      batch_size=batch_size, num_workers=2, train=augment, flip=False)  # a flip turns left into right
    loader, stream = video_loader(data, frames, seed=seed + 1)
    index = stream.sources[0].index
    classes = sorted({index.metadata(i).get("label") for i in range(len(index))}, key=str)
    if None in classes:
        raise ValueError(f"{shards}: fine-tuning the motion teacher needs labeled shards")
    cfg = copy.deepcopy(cfg)
    cfg.id2label = {i: str(c) for i, c in enumerate(classes)}
    cfg.label2id = {str(c): i for i, c in enumerate(classes)}
    # the classifier pools the mean token (VideoMAE V2's fine-tuning head); without mean pooling transformers would
    # classify from the first patch token. The encoder's final LayerNorm has no part in it and is kept as it was.
    cfg.use_mean_pooling = True
    model = VideoMAEForVideoClassification(cfg)
    weights = {k: v for k, v in encoder.state_dict().items() if not k.startswith("layernorm.")}
    model.videomae.load_state_dict(weights)
    info = fit(model, loader, data, lambda video, batch: model(
        pixel_values=video.transpose(1, 2),
        labels=torch.tensor([classes.index(lb) for lb in batch["labels"]])).loss, steps, lr / 3)
    info["classes"] = classes
    if eval_shards:
        info["eval_accuracy"] = classifier_accuracy(model, classes, replace(data, shards=eval_shards, train=False))
    encoder.load_state_dict(model.videomae.state_dict(), strict=False)   # every block; the final norm unchanged
    return encoder, info


@torch.no_grad()
def classifier_accuracy(model, classes: list, data: DataConfig) -> float:
    """Accuracy of a VideoMAEForVideoClassification over one pass of `data` (evaluation sampling)."""
    from ivtrain.data.loader import video_loader

    loader, _ = video_loader(replace(data, shuffle=False), data.num_frames, epochs=1)
    model.eval()
    right = total = 0
    for batch in loader:
        if not batch["size"]:
            continue
        pred = model(pixel_values=normalize(batch["video"], data.mean, data.std).transpose(1, 2)).logits.argmax(-1)
        right += sum(classes[int(i)] == lb for i, lb in zip(pred, batch["labels"]))
        total += len(batch["labels"])
    return right / max(1, total)


def fit(model, loader, data: DataConfig, loss_of, steps: int, lr: float) -> dict:
    """AdamW with a one-cycle schedule for `steps` batches; batches with no decodable clip are skipped.
    loss_of(normalized video, batch) -> loss."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.05)
    # warm up over 10 % of the steps, and over at least two (OneCycleLR divides by the warm-up length)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps, pct_start=min(0.5, max(0.1, 2 / steps)))
    model.train()
    losses = []
    for _, batch in zip(range(steps), loader):
        if not batch["size"]:
            continue
        loss = loss_of(normalize(batch["video"], data.mean, data.std), batch)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        losses.append(loss.item())
    return {"first_loss": losses[0] if losses else None,
            "last_loss": sum(losses[-5:]) / max(1, len(losses[-5:])) if losses else None, "steps": len(losses)}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out_dir")
    parser.add_argument("--shards", default=None, help="train the VideoMAE teacher on these shards first")
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=8)
    args = parser.parse_args(argv)
    out = Path(args.out_dir)
    save_tiny_clip_teacher(out / "tiny_clip", image_size=args.image_size)
    info = train_tiny_videomae(out / "tiny_videomae", args.shards, args.steps, args.image_size, args.frames,
                               batch_size=args.batch_size)
    print(f"wrote {out / 'tiny_clip'} and {out / 'tiny_videomae'} {info}")


if __name__ == "__main__":
    main()
