"""The trainable module of InternVideo2 stage 2 (ivtrain.objectives.iv2_stage2), under the released stage-2
parameter names (`vision_encoder`, `text_encoder`, `vision_proj`, `text_proj`, `temp`, `itm_head`, and with audio
`audio_encoder` (frozen), `audio_proj`, `av_concat_vision_proj`, `av_concat_audio_proj`, `av_fusion`, `avtm_head`),
so that its state dict is the released layout up to the few reshapes ivtrain.stage2_layout makes.

One forward computes the losses its batch's source feeds (`losses`), over the global batch
(ivtrain.objectives.iv2_stage2_losses):
  vision:  the encoder runs on the visible tokens of each clip (images and clips of one batch run as groups of
           equal frame count); pooled -> vision_proj; tokens (-> av_concat_vision_proj when the recipe sets
           av_concat_dim, as the released 6B) are what the fusion layers attend to.
  text:    each caption the batch's losses read runs through the text-only layers; CLS -> text_proj.
  audio:   the frozen tower's tokens; their mean -> audio_proj, and [audio_proj, vision_proj] -> av_fusion is the
           clip's audio-visual feature; tokens -> av_concat_audio_proj, placed before the vision tokens.
  VTC / AVTC, VTM / AVTM (fusion encoder + itm_head / avtm_head), MLM / AVMLM (fusion encoder + the BERT head).
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.models.text import FusionBert
from ivtrain.models.vit import InternVideo2
from ivtrain.objectives.iv2_stage2_losses import (IGNORE, contrastive, draw_negatives, global_mean,
                                                  matching_labels, matching_weights)

AV_LOSSES = ("avtc", "avtm", "avmlm")
# salts of the seeded draws: each negative draw and each masking has a stream of its own
SALTS = {"vtm_video": 11, "vtm_text": 12, "avtm_video": 13, "avtm_text": 14}


def concat_proj(width: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(width, out), nn.LayerNorm(out))


class Stage2Model(nn.Module):
    def __init__(self, vision_encoder: InternVideo2, text_encoder: FusionBert, embed_dim: int, temp: float,
                 temp_range: tuple[float, float], dist, audio_encoder: nn.Module | None = None,
                 av_concat_dim: int = 0, vtm_negatives: str = "global"):
        super().__init__()
        text_width, pool_dim = text_encoder.width, vision_encoder.clip_projector.cross_attn.proj.out_features
        self.vision_encoder, self.text_encoder = vision_encoder, text_encoder
        if av_concat_dim:
            self.av_concat_vision_proj = concat_proj(vision_encoder.cfg.embed_dim, av_concat_dim)
        self.vision_proj = nn.Linear(pool_dim, embed_dim)
        self.text_proj = nn.Linear(text_width, embed_dim)
        self.temp = nn.Parameter(torch.tensor([temp]))   # shape (1,): DeepSpeed broadcasts no 0-dim parameter
        self.itm_head = nn.Linear(text_width, 2)
        if audio_encoder is not None:
            self.audio_encoder = audio_encoder.requires_grad_(False).eval()
            self.audio_proj = nn.Linear(audio_encoder.width, embed_dim)
            self.av_concat_audio_proj = concat_proj(audio_encoder.width, av_concat_dim)
            self.av_fusion = nn.Linear(2 * embed_dim, embed_dim)
            self.avtm_head = nn.Linear(text_width, 2)
        self.temp_range, self.dist, self.vtm_negatives = temp_range, dist, vtm_negatives

    def train(self, mode: bool = True):
        super().train(mode)
        if hasattr(self, "audio_encoder"):
            self.audio_encoder.eval()   # frozen: no dropout, whatever the rest does
        return self

    # ------------------------------------------------------------------ towers
    def encode_vision(self, video: torch.Tensor, frames: torch.Tensor, visible: torch.Tensor | None,
                      length: int = 0):
        """(tokens (B, N, C) padded to `length` (at least the longest group's), their mask (B, N), pooled (B, P)).
        Each group of equal frame count runs at its own T (images through the one-frame position table); visible
        (B, T*HW) or None. Every rank pads to the same length so that the tokens can be gathered."""
        enc = self.vision_encoder
        hw = enc.grid[1] * enc.grid[2]
        groups = []
        for t in sorted(frames.unique().tolist()):
            rows = (frames == t).nonzero().squeeze(1)
            keep = None if visible is None else visible[rows, :t * hw]
            groups.append((t, rows, enc(video[rows, :, :t], keep)))
        longest = max([length] + [out.tokens.shape[1] for _, _, out in groups])
        b, c = video.shape[0], enc.cfg.embed_dim
        dtype = groups[0][2].tokens.dtype
        tokens = torch.zeros(b, longest, c, device=video.device, dtype=dtype)
        pooled = torch.zeros(b, groups[0][2].pooled.shape[1], device=video.device, dtype=dtype)
        mask = torch.zeros(b, longest, dtype=torch.bool, device=video.device)
        for _, rows, out in groups:
            n = out.tokens.shape[1]
            tokens = tokens.index_copy(0, rows, F.pad(out.tokens, (0, 0, 0, longest - n)))
            pooled = pooled.index_copy(0, rows, out.pooled)
            mask[rows, :n] = True
        if hasattr(self, "av_concat_vision_proj"):
            tokens = self.av_concat_vision_proj(tokens)
        return tokens, mask, pooled + 0.0 * self.unused_tables([t for t, _, _ in groups])

    def unused_tables(self, frame_counts: list[int]) -> torch.Tensor:
        """The sum of the position tables no clip of this batch read (the video table in a batch of images, the
        image table in one of clips), to enter the graph with weight 0: under ZeRO 2 every rank must give every
        parameter a gradient (they are reduced in buckets as they become ready), whatever its batch held."""
        enc = self.vision_encoder
        tables = {"pos_embed": enc.pos_embed}
        if hasattr(enc, "img_pos_embed"):
            tables["img_pos_embed"] = enc.img_pos_embed
        for t in frame_counts:
            tables.pop("img_pos_embed" if t == 1 and "img_pos_embed" in tables else "pos_embed", None)
        return sum((p.sum() for p in tables.values() if p.requires_grad), torch.zeros((), device=enc.pos_embed.device))

    def encode_text(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(hidden states after the text-only layers (B, L, C), the CLS projection (B, D))."""
        hidden = self.text_encoder.text(ids, mask)
        return hidden, self.text_proj(hidden[:, 0])

    @torch.no_grad()
    def encode_audio_tokens(self, fbank: torch.Tensor) -> torch.Tensor:
        return self.audio_encoder(fbank)

    def audio_visual(self, audio_tokens: torch.Tensor, v_proj: torch.Tensor, v_tokens: torch.Tensor,
                     v_mask: torch.Tensor):
        """(the clip's audio-visual feature (B, D), audio then vision tokens (B, Na + N, C), their mask)."""
        a_proj = self.audio_proj(audio_tokens.mean(1).to(self.audio_proj.weight.dtype))
        av = self.av_fusion(torch.cat([a_proj, v_proj], dim=-1))
        a_tokens = self.av_concat_audio_proj(audio_tokens.to(self.audio_proj.weight.dtype))
        mask = torch.cat([torch.ones(a_tokens.shape[:2], dtype=torch.bool, device=v_mask.device), v_mask], dim=1)
        return av, torch.cat([a_tokens, v_tokens], dim=1), mask

    def clamped_temp(self) -> torch.Tensor:
        """The temperature clamped to its range for this step; the gradient passes as if unclamped. The release
        clamps the weight in place (`temp.clamp_`) before each forward; under DeepSpeed's bf16/fp16 training that
        changes only the half-precision copy, and the optimizer's fp32 master, which is not clamped, overwrites it
        at the next step: the value used is the clamped one and the master may pass the bound, as here. (In an fp32
        run the release's clamp persists in the weight; this does not reproduce that.)"""
        lo, hi = self.temp_range
        return self.temp + (self.temp.clamp(lo, hi) - self.temp).detach()

    def match_score(self, text: torch.Tensor, text_mask: torch.Tensor, media: torch.Tensor, media_mask: torch.Tensor,
                    head: nn.Linear) -> torch.Tensor:
        """(B, 2) matching logits of text hidden states against media tokens, through the fusion layers."""
        return head(self.text_encoder.fusion(text, text_mask, media, media_mask)[:, 0])

    # ------------------------------------------------------------------ losses
    def forward(self, video, frames, visible, vision_length, valid, text, mlm, positives, valid_all, seeds, seeds_all,
                losses, audio=None):
        """text {caption: (ids, mask)}; mlm {loss: (masked ids, labels, caption)}; positives (B, G) bool; seeds:
        this rank's clip seeds, seeds_all every rank's; losses {name: (caption, weight)} this batch feeds; audio
        (B, F, bins) normalized fbank."""
        media, encoded = self.encode(video, frames, visible, vision_length, text, losses, audio)
        return self.losses(media, encoded, text, mlm, positives, valid, valid_all, seeds, seeds_all, losses)

    def encode(self, video, frames, visible, vision_length, text, losses, audio=None):
        """({"v": (projection, tokens, mask)} (+ "av" for the audio-visual losses), {caption: (hidden, projection)})."""
        v_tokens, v_mask, pooled = self.encode_vision(video, frames, visible, vision_length)
        v_proj = self.vision_proj(pooled)
        encoded = {name: self.encode_text(ids, mask) for name, (ids, mask) in text.items()}
        media = {"v": (v_proj, v_tokens, v_mask)}
        if any(name in AV_LOSSES for name in losses):
            media["av"] = self.audio_visual(self.encode_audio_tokens(audio), v_proj, v_tokens, v_mask)
        return media, encoded

    def losses(self, media, encoded, text, mlm, positives, valid, valid_all, seeds, seeds_all, losses):
        """(the weighted sum, {loss/<name>: value, temp}) of the losses `losses` names, each a mean over the
        global batch (this rank's share: ivtrain.objectives.iv2_stage2_losses)."""
        dist = self.dist
        temp = self.clamped_temp()
        terms: dict[str, torch.Tensor] = {}
        for name, (caption, weight) in losses.items():
            kind = "av" if name in AV_LOSSES else "v"
            m_proj, m_tokens, m_mask = media[kind]
            if name in ("vtc", "avtc"):
                hidden, t_proj = encoded[caption]
                total, count = contrastive(m_proj, t_proj, dist.all_gather(m_proj), dist.all_gather(t_proj), temp,
                                           positives, valid, valid_all)
            elif name in ("vtm", "avtm"):
                hidden, t_proj = encoded[caption]
                total, count = self.matching(kind, m_proj, m_tokens, m_mask, hidden, text[caption][1], t_proj,
                                             temp, positives, valid, valid_all, seeds, seeds_all)
            else:
                ids, labels, caption = mlm[name]
                total, count = self.masked_lm(ids, text[caption][1], labels, m_tokens, m_mask, valid)
            terms[name] = global_mean(total, count, dist)
        loss = sum(weight * terms[name] for name, (_, weight) in losses.items())
        metrics = {f"loss/{k}": v.detach() for k, v in terms.items()}
        metrics["temp"] = temp.detach().squeeze()
        return loss, metrics

    def matching(self, kind, m_proj, m_tokens, m_mask, hidden, t_mask, t_proj, temp, positives, valid, valid_all,
                 seeds, seeds_all):
        """VTM (kind "v") or AVTM ("av"): one negative medium per text and one negative text per medium, drawn
        in proportion to softmax(sim) over the global batch (the release draws from its rank's batch alone:
        `vtm_negatives: local` does that), scored by the fusion encoder. Returns (sum of CE, rows scored)."""
        dist = self.dist
        local = self.vtm_negatives == "local" or dist.world == 1
        if local:
            cols = slice(dist.rank * len(valid), (dist.rank + 1) * len(valid)) if dist.world > 1 else slice(None)
            positives, valid_all, seeds_all = positives[:, cols], valid, seeds
            all_proj, all_tp = m_proj, t_proj
            all_tokens, all_mmask, all_hidden, all_tmask = m_tokens, m_mask, hidden, t_mask
        else:
            all_proj, all_tp = dist.all_gather(m_proj), dist.all_gather(t_proj)
            all_tokens, all_mmask = dist.all_gather(m_tokens), dist.all_gather(m_mask)
            all_hidden, all_tmask = dist.all_gather(hidden), dist.all_gather(t_mask)
        with torch.no_grad():
            m_n, t_n = F.normalize(m_proj.float(), dim=-1), F.normalize(t_proj.float(), dim=-1)
            sim_m2t = m_n @ F.normalize(all_tp.float(), dim=-1).T / temp
            sim_t2m = t_n @ F.normalize(all_proj.float(), dim=-1).T / temp
            neg_media = draw_negatives(matching_weights(sim_t2m, positives, valid_all), seeds, seeds_all,
                                       SALTS[f"{kind}tm_video"])
            neg_text = draw_negatives(matching_weights(sim_m2t, positives, valid_all), seeds, seeds_all,
                                      SALTS[f"{kind}tm_text"])
        head = self.itm_head if kind == "v" else self.avtm_head
        nm, nt = neg_media.clamp_min(0), neg_text.clamp_min(0)
        logits = self.match_score(torch.cat([hidden, hidden, all_hidden[nt]]),
                                  torch.cat([t_mask, t_mask, all_tmask[nt]]),
                                  torch.cat([m_tokens, all_tokens[nm], m_tokens]),
                                  torch.cat([m_mask, all_mmask[nm], m_mask]), head)
        scored = torch.cat([valid, valid & (neg_media >= 0), valid & (neg_text >= 0)])
        ce = F.cross_entropy(logits.float(), matching_labels(len(valid), logits.device), reduction="none")
        return ce[scored].sum(), int(scored.sum())

    def masked_lm(self, ids, t_mask, labels, m_tokens, m_mask, valid):
        """MLM / AVMLM: masked captions through the text layers, then the fusion layers attending to the visible
        media tokens; cross-entropy on the masked positions. Returns (sum of CE, tokens predicted)."""
        labels = labels.masked_fill(~valid[:, None], IGNORE)
        hidden = self.text_encoder.fusion(self.text_encoder.text(ids, t_mask), t_mask, m_tokens, m_mask)
        predicted = labels != IGNORE
        logits = self.text_encoder.mlm_logits(hidden[predicted])
        return F.cross_entropy(logits.float(), labels[predicted], reduction="sum"), int(predicted.sum())
