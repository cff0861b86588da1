"""The QFormer of stage 3: BLIP-2's querying transformer with InstructBLIP's instruction input, as VideoChat2 and
InternVideo2-Chat run it between the vision tower and the LLM.

A BERT-base style stack whose self-attention runs over [learned queries; instruction tokens] (the instruction's
tokens get word and position embeddings, the queries none; one LayerNorm over both). Every `cross_attention_freq`-th
layer (0, 2, 4, ...) lets the query part cross-attend to the vision tokens; queries and text then go through
feed-forward blocks of their own (`intermediate_query`/`output_query` for the queries, BERT's `intermediate`/`output`
for the text). The output is the query part only. The blocks are ivtrain.models.text's (BERT's post-norm pieces);
parameter names are the release's (`bert.embeddings.*`, `bert.encoder.layer.N.{attention,crossattention,
intermediate,output,intermediate_query,output_query}.*`), i.e. InstructBLIP's in transformers with `attention.self`
for `attention.attention` (tests/test_train_stage3_model.py runs both on the same weights).

Started from a BERT directory (bert-base-uncased for the real recipes): embeddings and layers by name, each
query feed-forward block a copy of its layer's text one (BLIP-2's start), cross-attention new. The last layer's
text feed-forward block feeds no output, so it is not run and not trained.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.models.text import Attention, Dense, SelfOutput, bert_init


class QFormerError(ValueError):
    """A QFormer directory that is not a BERT, or does not fit the recipe."""


@dataclass
class QFormerConfig:
    bert: str = ""                   # a BERT directory: config + tokenizer (+ weights, with load_weights)
    load_weights: bool = True        # start from its weights (false: BERT's random initialization)
    queries: int = 32                # learned queries (`query_tokens`)
    extra_queries: int = 64          # more learned queries (`extra_query_tokens`), as VideoChat2 stage 3
    cross_attention_freq: int = 2    # layers 0, f, 2f, ... cross-attend to the vision tokens
    text_input: bool = True          # the instruction enters the self-attention (InstructBLIP)
    max_text_len: int = 512          # instruction tokens (longer ones lose their start)
    dropout: float = 0.1
    attn_dropout: float = 0.1
    drop_path: float = 0.2


class Embeddings(nn.Module):
    def __init__(self, cfg, text_input: bool, dropout: float):
        super().__init__()
        if text_input:
            self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
            self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = dropout

    def forward(self, queries: torch.Tensor, ids: torch.Tensor | None) -> torch.Tensor:
        x = queries
        if ids is not None:
            text = self.word_embeddings(ids) + self.position_embeddings(torch.arange(ids.shape[1], device=ids.device))
            x = torch.cat([queries, text.to(queries.dtype)], dim=1)
        return F.dropout(self.LayerNorm(x), self.dropout, self.training)


class Layer(nn.Module):
    def __init__(self, cfg, cross_width: int | None, text_input: bool, dropout: float, attn_dropout: float,
                 drop_path: float):
        super().__init__()
        h, eps, heads, f = cfg.hidden_size, cfg.layer_norm_eps, cfg.num_attention_heads, cfg.intermediate_size
        self.attention = Attention(h, heads, eps, None, dropout, attn_dropout, drop_path)
        if cross_width is not None:
            self.crossattention = Attention(h, heads, eps, cross_width, dropout, attn_dropout, drop_path)
        if text_input:
            self.intermediate = Dense(h, f)
            self.output = SelfOutput(f, h, eps, dropout, drop_path)
        self.intermediate_query = Dense(h, f)
        self.output_query = SelfOutput(f, h, eps, dropout, drop_path)

    def forward(self, x, n_query: int, mask, vision, vision_mask, text_out: bool = True):
        x = self.attention(x, mask=mask)
        query, text = x[:, :n_query], x[:, n_query:]
        if hasattr(self, "crossattention"):
            query = self.crossattention(query, kv=vision, mask=vision_mask)
        query = self.output_query(self.intermediate_query(query), query)
        if text.shape[1] and text_out:
            text = self.output(self.intermediate(text), text)
        return torch.cat([query, text], dim=1)


class Encoder(nn.Module):
    def __init__(self, layers: list[Layer]):
        super().__init__()
        self.layer = nn.ModuleList(layers)


class Bert(nn.Module):
    def __init__(self, embeddings: Embeddings, encoder: Encoder):
        super().__init__()
        self.embeddings, self.encoder = embeddings, encoder


class QFormer(nn.Module):
    """Queries in, vision tokens and instruction tokens attended to, query features out (B, Q, hidden)."""

    def __init__(self, cfg, vision_width: int, qcfg: QFormerConfig):
        super().__init__()
        n = cfg.num_hidden_layers
        if qcfg.cross_attention_freq < 1:
            raise QFormerError("qformer.cross_attention_freq must be >= 1")
        rates = torch.linspace(0, qcfg.drop_path, n).tolist() if n > 1 else [0.0]
        layers = [Layer(cfg, vision_width if i % qcfg.cross_attention_freq == 0 else None, qcfg.text_input,
                        qcfg.dropout, qcfg.attn_dropout, rates[i]) for i in range(n)]
        self.config, self.text_input = cfg, qcfg.text_input
        self.bert = Bert(Embeddings(cfg, qcfg.text_input, qcfg.dropout), Encoder(layers))
        self.apply(self._init)
        if qcfg.text_input:   # no output depends on the last layer's text feed-forward block
            for module in (layers[-1].intermediate, layers[-1].output):
                module.requires_grad_(False)

    def _init(self, m):   # transformers' BERT initialization
        bert_init(m, self.config.initializer_range)

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def forward(self, queries: torch.Tensor, vision: torch.Tensor, ids: torch.Tensor | None = None,
                mask: torch.Tensor | None = None, vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """queries (B, Q, C); vision (B, N, vision width); ids/mask (B, L) instruction tokens and their mask."""
        if not self.text_input:
            ids = None
        q = queries.shape[1]
        x = self.bert.embeddings(queries, ids)
        full_mask = None
        if ids is not None and mask is not None:
            full_mask = torch.cat([torch.ones(mask.shape[0], q, dtype=torch.bool, device=mask.device), mask.bool()], 1)
        layers = self.bert.encoder.layer
        for i, layer in enumerate(layers):
            x = layer(x, q, full_mask, vision, vision_mask, text_out=i < len(layers) - 1)
        return x[:, :q]

    def flops(self, queries: int, text: int, vision: int) -> float:
        """Forward FLOPs (2 per multiply-add) for one view: `queries` + `text` tokens over `vision` tokens."""
        c, f = self.config.hidden_size, self.config.intermediate_size
        text = text if self.text_input else 0
        n, total = queries + text, 0.0
        for i, layer in enumerate(self.bert.encoder.layer):
            total += 2 * n * 4 * c * c + 4 * n * n * c + 2 * queries * 2 * c * f
            if text and i < len(self.bert.encoder.layer) - 1:
                total += 2 * text * 2 * c * f
            if hasattr(layer, "crossattention"):
                kv = layer.crossattention.self.key.in_features
                total += 2 * queries * 2 * c * c + 2 * vision * 2 * kv * c + 4 * queries * vision * c
        return total


def load_qformer(qcfg: QFormerConfig, vision_width: int) -> tuple[QFormer, list[str]]:
    """A QFormer started from the BERT directory `qcfg.bert` (see the module docstring); returns it and the names of
    the weights the directory did not give (cross-attention, and everything when load_weights is false)."""
    path = Path(qcfg.bert)
    if not (path / "config.json").is_file():
        raise QFormerError(f"QFormer directory {path} has no config.json (a BERT directory, e.g. bert-base-uncased)")
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, local_files_only=True)
    if cfg.model_type != "bert":
        raise QFormerError(f"{path} holds a {cfg.model_type} model, not a BERT")
    if qcfg.max_text_len > cfg.max_position_embeddings:
        raise QFormerError(f"qformer.max_text_len {qcfg.max_text_len} exceeds the {cfg.max_position_embeddings} "
                           f"positions of {path}")
    qformer = QFormer(cfg, vision_width, qcfg)
    target = qformer.state_dict()
    if not qcfg.load_weights:
        return qformer, sorted(target)
    from transformers import BertForMaskedLM

    try:
        source = BertForMaskedLM.from_pretrained(path, local_files_only=True).state_dict()
    except OSError as e:
        raise QFormerError(f"{path} holds no BERT weights ({e}); set qformer.load_weights=false to start from "
                           "random ones") from None
    given = {}
    for name in target:
        origin = name.replace("_query.", ".")   # a query feed-forward block starts as its layer's text one
        if origin in source and source[origin].shape == target[name].shape:
            given[name] = source[origin]
    qformer.load_state_dict(given, strict=False)
    return qformer, sorted(set(target) - set(given))
