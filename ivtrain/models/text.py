"""The text tower of InternVideo2 stage 2: BERT whose layers from `fusion_layer` on also cross-attend to vision
tokens (ALBEF's fusion encoder, as the release's xbert), with BERT's masked-LM head.

Two halves of one stack: `text` runs layers [0, fusion_layer) on the tokens alone (its CLS feature is what the
contrastive loss compares); `fusion` runs layers [fusion_layer, depth) on those hidden states with cross attention
to the vision tokens (what matching and masked language modeling read). Parameter names are the release's and
transformers' (`bert.embeddings.*`, `bert.encoder.layer.N.{attention,crossattention,intermediate,output}.*`,
`cls.predictions.*`), so a transformers BERT directory loads by name and a stage-2 export keeps the released layout.
A plain BERT has no cross-attention weights: they start as transformers initializes new BERT weights (normal, std
= initializer_range), and the load report names them.

Deliberate difference: no dropout (the release's xbert applies BERT's hidden and attention dropout, 0.1). Dropout
draws from each process's torch generator, so the same sample would be dropped differently on another number of
processes or after a resume on another world size; every other random draw of stage 2 (masks, matching negatives,
MLM positions) comes from the sample's own seed so that runs are exact under any world size.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.models.layers import DropPath


def bert_init(m: nn.Module, std: float) -> None:
    """transformers' BERT initialization of one module: normal(std) Linear and Embedding weights, zero biases,
    LayerNorms at one and zero (the text tower's and the QFormer's new weights)."""
    if isinstance(m, (nn.Linear, nn.Embedding)):
        nn.init.normal_(m.weight, std=std)
    if isinstance(m, nn.Linear) and m.bias is not None:
        nn.init.zeros_(m.bias)
    if isinstance(m, nn.LayerNorm):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


class TextTowerError(ValueError):
    """A text encoder directory that is not a BERT, or does not fit the recipe."""


class SelfOutput(nn.Module):
    """Post-norm residual: LayerNorm(dense(x) + input), the branch through dropout and drop path (QFormer) first."""

    def __init__(self, d_in: int, hidden: int, eps: float, dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.dense = nn.Linear(d_in, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=eps)
        self.dropout, self.drop_path = dropout, DropPath(drop_path)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        branch = self.drop_path(F.dropout(self.dense(x), self.dropout, self.training))
        return self.LayerNorm(branch + residual)


class Projections(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int, attn_dropout: float = 0.0):
        super().__init__()
        self.heads, self.attn_dropout = heads, attn_dropout
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)

    def forward(self, x: torch.Tensor, kv: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        """mask: (B, Nkv) True where the key may be attended."""
        b, n, c = x.shape
        split = lambda t: t.reshape(b, t.shape[1], self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.query(x)), split(self.key(kv)), split(self.value(kv))
        bias = None if mask is None else mask[:, None, None, :]
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                             dropout_p=self.attn_dropout if self.training else 0.0)
        return out.transpose(1, 2).reshape(b, n, c)


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, eps: float, kv_width: int | None = None, dropout: float = 0.0,
                 attn_dropout: float = 0.0, drop_path: float = 0.0):
        super().__init__()
        self.self = Projections(hidden, heads, kv_width or hidden, attn_dropout)
        self.output = SelfOutput(hidden, hidden, eps, dropout, drop_path)

    def forward(self, x, kv=None, mask=None):
        return self.output(self.self(x, x if kv is None else kv, mask), x)


class Dense(nn.Module):
    def __init__(self, d_in: int, d_out: int):
        super().__init__()
        self.dense = nn.Linear(d_in, d_out)

    def forward(self, x):
        return F.gelu(self.dense(x))


class Layer(nn.Module):
    def __init__(self, cfg, cross_width: int | None):
        super().__init__()
        h, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.attention = Attention(h, cfg.num_attention_heads, eps)
        if cross_width is not None:
            self.crossattention = Attention(h, cfg.num_attention_heads, eps, kv_width=cross_width)
        self.intermediate = Dense(h, cfg.intermediate_size)
        self.output = SelfOutput(cfg.intermediate_size, h, eps)

    def forward(self, x, mask, vision=None, vision_mask=None):
        x = self.attention(x, mask=mask)
        if hasattr(self, "crossattention"):
            x = self.crossattention(x, kv=vision, mask=vision_mask)
        return self.output(self.intermediate(x), x)


class Embeddings(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class Encoder(nn.Module):
    def __init__(self, cfg, fusion_layer: int, vision_width: int):
        super().__init__()
        self.layer = nn.ModuleList(Layer(cfg, vision_width if i >= fusion_layer else None)
                                   for i in range(cfg.num_hidden_layers))


class Bert(nn.Module):
    def __init__(self, cfg, fusion_layer: int, vision_width: int):
        super().__init__()
        self.embeddings = Embeddings(cfg)
        self.encoder = Encoder(cfg, fusion_layer, vision_width)


class PredictionTransform(nn.Module):
    def __init__(self, cfg):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x):
        return self.LayerNorm(F.gelu(self.dense(x)))


class Predictions(nn.Module):
    """BERT's masked-LM head; its output matrix is the word embedding table (tied, as in BERT)."""

    def __init__(self, cfg, embeddings: nn.Embedding):
        super().__init__()
        self.transform = PredictionTransform(cfg)
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.embeddings = [embeddings]   # a list: the tied table is not this module's parameter a second time

    def forward(self, x):
        return self.transform(x) @ self.embeddings[0].weight.T + self.bias


class MLMHead(nn.Module):
    def __init__(self, cfg, embeddings: nn.Embedding):
        super().__init__()
        self.predictions = Predictions(cfg, embeddings)


class FusionBert(nn.Module):
    """BERT with cross attention to vision tokens from `fusion_layer` on; see the module docstring."""

    def __init__(self, cfg, fusion_layer: int, vision_width: int):
        super().__init__()
        if not 0 <= fusion_layer <= cfg.num_hidden_layers:
            raise TextTowerError(f"fusion_layer {fusion_layer} is outside the text encoder's "
                                 f"{cfg.num_hidden_layers} layers")
        self.config, self.fusion_layer = cfg, fusion_layer
        self.bert = Bert(cfg, fusion_layer, vision_width)
        self.cls = MLMHead(cfg, self.bert.embeddings.word_embeddings)
        self.apply(self._init)

    def _init(self, m):   # transformers' BERT initialization, for the weights a checkpoint does not hold
        bert_init(m, self.config.initializer_range)

    @property
    def width(self) -> int:
        return self.config.hidden_size

    def text(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """(B, L) ids, (B, L) bool mask -> hidden states after the text-only layers (B, L, width)."""
        x = self.bert.embeddings(ids)
        for layer in self.bert.encoder.layer[:self.fusion_layer]:
            x = layer(x, mask)
        return x

    def fusion(self, x: torch.Tensor, mask: torch.Tensor, vision: torch.Tensor,
               vision_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Text hidden states -> the fusion layers, each cross-attending to `vision` (B, N, vision width)."""
        for layer in self.bert.encoder.layer[self.fusion_layer:]:
            x = layer(x, mask, vision, vision_mask)
        return x

    def mlm_logits(self, x: torch.Tensor) -> torch.Tensor:
        return self.cls.predictions(x)

    def flops(self, tokens: int, vision_tokens: int, layers: range | None = None) -> float:
        """Forward FLOPs of `layers` (default all) over one text of `tokens` attending to `vision_tokens`."""
        c, f = self.config.hidden_size, self.config.intermediate_size
        total = 0.0
        for i in layers or range(self.config.num_hidden_layers):
            total += 2 * tokens * (4 * c * c + 2 * c * f) + 4 * tokens * tokens * c
            if i >= self.fusion_layer:
                kv = self.bert.encoder.layer[i].crossattention.self.key.in_features
                total += 2 * tokens * 2 * c * c + 2 * vision_tokens * 2 * kv * c + 4 * tokens * vision_tokens * c
        return total


def load_text_tower(path: str | Path, fusion_layer: int, vision_width: int) -> tuple[FusionBert, list[str]]:
    """A FusionBert from a local transformers BERT directory (config + weights, e.g. bert-large-uncased saved with
    save_pretrained), loaded by name; returns (tower, names of the weights the directory did not hold, i.e. newly
    initialized). Anything the directory holds that the tower has no place for, or a shape that differs, is an
    error naming it."""
    path = Path(path)
    if not (path / "config.json").is_file():
        raise TextTowerError(f"text encoder directory {path} has no config.json")
    from transformers import AutoConfig, BertForMaskedLM

    cfg = AutoConfig.from_pretrained(path)
    if cfg.model_type != "bert":
        raise TextTowerError(f"{path} holds a {cfg.model_type} model, not a BERT")
    tower = FusionBert(cfg, fusion_layer, vision_width)
    source = BertForMaskedLM.from_pretrained(path).state_dict()
    source = {k: v for k, v in source.items() if not k.endswith(("position_ids", "cls.predictions.decoder.weight",
                                                                  "cls.predictions.decoder.bias"))}
    source.pop("bert.pooler.dense.weight", None)
    source.pop("bert.pooler.dense.bias", None)
    target = tower.state_dict()
    unexpected = sorted(set(source) - set(target))
    mismatched = [k for k in source if k in target and source[k].shape != target[k].shape]
    if unexpected or mismatched:
        raise TextTowerError(f"{path} does not fit a BERT text tower: " +
                             "; ".join([f"no place for {k}" for k in unexpected[:3]] +
                                       [f"{k} is {list(source[k].shape)}, the tower's {list(target[k].shape)}"
                                        for k in mismatched[:3]]))
    tower.load_state_dict(source, strict=False)
    return tower, sorted(set(target) - set(source))


def new_weights_summary(names: list[str]) -> str:
    """'crossattention of layers 19-23 (120 tensors)' style summary of newly initialized weights."""
    layers = sorted({int(n.split(".")[3]) for n in names if ".layer." in n})
    if not names:
        return "none"
    span = f"layers {layers[0]}-{layers[-1]}" if layers else "no layer"
    return f"{len(names)} tensors ({span}), e.g. {names[0]}"

