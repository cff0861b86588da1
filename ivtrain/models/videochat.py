"""The stage-3 model: vision tower -> LayerNorm -> QFormer -> linear projection -> causal LLM (VideoChat2 lineage).

Attribute names are the released InternVideo2-Chat ones (`vision_encoder`, `vision_layernorm`, `qformer`,
`query_tokens`, `extra_query_tokens`, `project_up`, `lm`), so its state dict is that layout.

A sample brings one or more views (a clip; or, in HD mode, its tiles and a global view), each a clip of T frames
(an image: one frame). Each view's vision tokens (of block `vision_layer`, CLS included) go through the LayerNorm
and the QFormer, whose queries (and the instruction's tokens) attend to them; the queries' outputs, projected to
the LLM's width, are the view's LLM tokens. A sample's views' tokens, in order, take the place of the media in its
conversation's token sequence. The loss is the LLM's next-token cross entropy on the answer tokens only.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.data.collate import pad_stack
from ivtrain.data.conversation import IGNORE
from ivtrain.models.qformer import QFormer
from ivtrain.models.vit import InternVideo2


class VideoChat(nn.Module):
    def __init__(self, encoder: InternVideo2, qformer: QFormer, lm: nn.Module, queries: int, extra_queries: int,
                 vision_layer: int = -1):
        super().__init__()
        if not -encoder.depth <= vision_layer < encoder.depth:
            raise ValueError(f"vision_layer {vision_layer} is outside the vision tower's {encoder.depth} blocks")
        self.vision_encoder = encoder
        self.vision_layernorm = nn.LayerNorm(encoder.cfg.embed_dim, eps=1e-12)
        self.qformer = qformer
        std = qformer.config.initializer_range
        self.query_tokens = nn.Parameter(torch.randn(1, queries, qformer.width) * std)
        if extra_queries:
            # drawn like the queries: extra queries that all start equal (as released, zeros) stay equal, since
            # nothing but their values tells them apart in the QFormer
            self.extra_query_tokens = nn.Parameter(torch.randn(1, extra_queries, qformer.width) * std)
        self.project_up = nn.Linear(qformer.width, lm.config.hidden_size)
        self.lm = lm
        self.vision_layer = vision_layer % encoder.depth
        # no output depends on the tower's pooling head nor on blocks after the one read
        encoder.clip_projector.requires_grad_(False)
        for block in encoder.blocks[self.vision_layer + 1:]:
            block.requires_grad_(False)

    # ------------------------------------------------------------------ vision
    @property
    def vision_frozen(self) -> bool:
        return not any(p.requires_grad for p in self.vision_encoder.parameters())

    def train(self, mode: bool = True):
        super().train(mode)
        if self.vision_frozen:   # a frozen tower runs as at inference (no stochastic depth)
            self.vision_encoder.eval()
        return self

    def vision_features(self, views: torch.Tensor, frames: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """views (V, 3, T, S, S) normalized, frames (V,) real frames of each -> tokens (V, N, C) of block
        `vision_layer` and their mask (V, N): views of equal frame count go through the tower together."""
        groups, rows = [], []
        for t in frames.unique().tolist():
            idx = (frames == t).nonzero().squeeze(1)
            out = self.vision_encoder(views[idx, :, :t], return_layers=(self.vision_layer,))
            groups += list(out.layers[self.vision_layer])
            rows.append(idx)
        order = torch.cat(rows).argsort()
        tokens, mask = pad_stack([groups[i] for i in order.tolist()], dim=0)
        return tokens, mask.to(tokens.device)

    # ------------------------------------------------------------------ bridge
    def queries(self) -> torch.Tensor:
        if hasattr(self, "extra_query_tokens"):
            return torch.cat([self.query_tokens, self.extra_query_tokens], dim=1)
        return self.query_tokens

    def bridge(self, tokens: torch.Tensor, mask: torch.Tensor, ids: torch.Tensor | None,
               ids_mask: torch.Tensor | None) -> torch.Tensor:
        """Vision tokens (V, N, C) of each view + its instruction -> the view's LLM tokens (V, Q, LLM width)."""
        vision = self.vision_layernorm(tokens)
        queries = self.queries().expand(vision.shape[0], -1, -1)
        return self.project_up(self.qformer(queries, vision, ids, ids_mask, mask))

    def view_tokens(self, tokens, mask, views_per_sample: list[int], ids, ids_mask) -> list[torch.Tensor]:
        """Each sample's LLM vision tokens: its views' bridge outputs in order, (views x Q, LLM width)."""
        per_view = torch.tensor(views_per_sample, device=tokens.device)
        if ids is not None:
            ids, ids_mask = ids.repeat_interleave(per_view, 0), ids_mask.repeat_interleave(per_view, 0)
        out = self.bridge(tokens, mask, ids, ids_mask)
        return [v.reshape(-1, v.shape[-1]) for v in out.split(views_per_sample)]

    # ------------------------------------------------------------------ LLM
    def assemble(self, vision: list[torch.Tensor], input_ids: torch.Tensor, labels: torch.Tensor | None,
                 vision_at: list[int], text_len: list[int], left_pad: bool = False):
        """The LLM input: each sample's text embeddings with its vision tokens at `vision_at`; padded (on the right
        for training, on the left for generation) -> (embeddings (B, L, D), attention mask (B, L), labels (B, L))."""
        text = self.lm.get_input_embeddings()(input_ids)
        seqs, labs = [], []
        for i, v in enumerate(vision):
            at, n = vision_at[i], text_len[i]
            seqs.append(torch.cat([text[i, :at], v.to(text.dtype), text[i, at:n]]))
            if labels is not None:
                fill = torch.full((v.shape[0],), IGNORE, dtype=labels.dtype, device=labels.device)
                labs.append(torch.cat([labels[i, :at], fill, labels[i, at:n]]))
        if left_pad:
            seqs = [s.flip(0) for s in seqs]
        embeds, mask = pad_stack(seqs, dim=0)
        if left_pad:
            embeds, mask = embeds.flip(1), mask.flip(1)
        out_labels = pad_stack(labs, dim=0, value=IGNORE)[0] if labels is not None else None
        return embeds, mask.to(embeds.device).long(), out_labels

    def forward(self, views, view_frames, views_per_sample, qformer_ids, qformer_mask, input_ids, labels, vision_at,
                text_len, vision_tokens=None, vision_mask=None, zero_vision: bool = False, stats=None):
        """-> (loss: mean cross entropy over the batch's answer tokens, metrics). vision_tokens/vision_mask: the
        tower's output computed beforehand (a frozen tower runs in `prepare`, without grad); stats: metrics of the
        batch to report with the loss's."""
        if vision_tokens is None:
            vision_tokens, vision_mask = self.vision_features(views, view_frames)
        vision = self.view_tokens(vision_tokens, vision_mask, views_per_sample, qformer_ids, qformer_mask)
        if zero_vision:
            vision = [torch.zeros_like(v) for v in vision]
        embeds, mask, targets = self.assemble(vision, input_ids, labels, vision_at, text_len)
        logits = self.lm(inputs_embeds=embeds, attention_mask=mask, use_cache=False).logits
        targets = targets[:, 1:]
        answer = targets != IGNORE
        picked = logits[:, :-1][answer].float()
        loss = F.cross_entropy(picked, targets[answer])
        accuracy = (picked.argmax(-1) == targets[answer]).float().mean()
        return loss, {"loss/answer": loss.detach(), "answer_token_accuracy": accuracy.detach(),
                      "llm_tokens": mask.sum().float() / mask.shape[0], **(stats or {})}

    @torch.no_grad()
    def generate(self, views, view_frames, views_per_sample, qformer_ids, qformer_mask, input_ids, vision_at,
                 text_len, zero_vision: bool = False, **generation) -> list[list[int]]:
        """New token ids per sample (greedy unless generation asks for sampling)."""
        tokens, mask = self.vision_features(views, view_frames)
        vision = self.view_tokens(tokens, mask, views_per_sample, qformer_ids, qformer_mask)
        if zero_vision:
            vision = [torch.zeros_like(v) for v in vision]
        embeds, attention, _ = self.assemble(vision, input_ids, None, vision_at, text_len, left_pad=True)
        out = self.lm.generate(inputs_embeds=embeds, attention_mask=attention, **generation)
        return [row.tolist() for row in out]
