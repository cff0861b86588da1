"""InternVideo-Next's predictor: the last K layers of a ModernBERT, read from a local transformers directory, fed
the encoder's CLS tokens and its visible tokens with a learned mask token at every hidden place.

Input: [CLS outputs; visible outputs scattered back to their places, the mask token everywhere else] + a position
table of its own (sin-cos initialized, trained) -> an MLP projection to ModernBERT's width (`to_bert_proj`) ->
the layers. Each layer is ModernBERT's own: pre-LayerNorm (none before the attention of a model's first layer),
fused qkv without bias, rotary position embedding on q and k, attention over the whole sequence ("full_attention"
layers) or over a window of `local_attention / 2` tokens on each side ("sliding_attention"), each kind with its own
RoPE base, then a GLU MLP (Wi -> act(input) * gate -> Wo). The layer kinds, bases and sizes come from the
directory's config.json (both the transformers 4.x keys and 5.x's layer_types / rope_parameters). Attention runs
through SDPA (CPU or GPU) or flash-attn where it imports on CUDA; dropout is not applied.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
import torch.utils.checkpoint as activation_checkpoint

from ivtrain.models.attention import attention
from ivtrain.models.heads import MLPHead
from ivtrain.models.pos_embed import sincos_3d

ACTIVATIONS = {"gelu": lambda x: F.gelu(x), "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
               "gelu_new": lambda x: F.gelu(x, approximate="tanh"), "silu": F.silu, "swish": F.silu, "relu": F.relu}
KINDS = ("full_attention", "sliding_attention")


@dataclass(frozen=True)
class ModernBertArch:
    hidden: int
    heads: int
    intermediate: int
    layer_types: tuple[str, ...]     # one per layer of the saved model
    window: int                      # tokens on each side a sliding-window layer sees (local_attention // 2)
    rope_theta: dict                 # layer kind -> RoPE base
    norm_eps: float = 1e-5
    norm_bias: bool = False
    attention_bias: bool = False
    mlp_bias: bool = False
    activation: str = "gelu"

    @property
    def depth(self) -> int:
        return len(self.layer_types)


def read_modernbert(path: str | Path) -> ModernBertArch:
    """The architecture in a ModernBERT directory's config.json; ValueError (one line) for anything else."""
    path = Path(path)
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(f"predictor directory {path} has no config.json (a transformers ModernBERT directory)")
    raw = json.loads(config.read_text())
    raw = raw.get("text_config", raw)
    if raw.get("model_type") != "modernbert":
        raise ValueError(f"predictor directory {path} is not a ModernBERT (model_type {raw.get('model_type')!r}, "
                         "want 'modernbert')")
    depth = int(raw.get("num_hidden_layers", 22))
    every = int(raw.get("global_attn_every_n_layers", 3))
    types = tuple(raw.get("layer_types") or ("sliding_attention" if i % every else "full_attention"
                                             for i in range(depth)))
    rope = raw.get("rope_parameters") or {}
    legacy = {"full_attention": raw.get("global_rope_theta", 160000.0),     # transformers 4.x names
              "sliding_attention": raw.get("local_rope_theta", 10000.0)}
    theta = {kind: (rope.get(kind) or {}).get("rope_theta", base) for kind, base in legacy.items()}
    kinds = {str((p or {}).get("rope_type", "default")) for p in rope.values()} - {"default"}
    arch = ModernBertArch(hidden=int(raw.get("hidden_size", 768)), heads=int(raw.get("num_attention_heads", 12)),
                          intermediate=int(raw.get("intermediate_size", 1152)), layer_types=types,
                          window=int(raw.get("local_attention", 128)) // 2, rope_theta=theta,
                          norm_eps=float(raw.get("norm_eps", 1e-5)), norm_bias=bool(raw.get("norm_bias", False)),
                          attention_bias=bool(raw.get("attention_bias", False)),
                          mlp_bias=bool(raw.get("mlp_bias", False)),
                          activation=raw.get("hidden_activation", "gelu"))
    problems = [f"{len(types)} layer types for {depth} layers" if len(types) != depth else "",
                f"unknown layer kinds {sorted(set(types) - set(KINDS))}" if set(types) - set(KINDS) else "",
                f"rope types {sorted(kinds)} (only the default RoPE)" if kinds else "",
                "rope_scaling (only the default RoPE)" if raw.get("rope_scaling") else "",
                f"activation {arch.activation!r}" if arch.activation not in ACTIVATIONS else "",
                f"hidden size {arch.hidden} not divisible by {arch.heads} heads" if arch.hidden % arch.heads else ""]
    problems = [p for p in problems if p]
    if problems:
        raise ValueError(f"predictor directory {path}: unsupported ModernBERT config: {'; '.join(problems)}")
    return arch


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat([-x2, x1], dim=-1)


def rope_tables(positions: torch.Tensor, head_dim: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos, sin), each (N, head_dim) in float32: the frequencies repeated over both halves (ModernBERT's RoPE)."""
    inv_freq = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float32, device=positions.device) / head_dim)
    freqs = positions.float()[:, None] * inv_freq[None]
    emb = torch.cat([freqs, freqs], dim=-1)
    return emb.cos(), emb.sin()


class ModernBertAttention(nn.Module):
    def __init__(self, arch: ModernBertArch, window: int | None, backend: str):
        super().__init__()
        self.heads, self.window, self.backend = arch.heads, window, backend
        self.Wqkv = nn.Linear(arch.hidden, 3 * arch.hidden, bias=arch.attention_bias)
        self.Wo = nn.Linear(arch.hidden, arch.hidden, bias=arch.attention_bias)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.Wqkv(x).view(b, n, 3, self.heads, c // self.heads).unbind(2)   # (B, N, H, D) each
        cos, sin = cos[:, None], sin[:, None]                                          # over the heads
        q = (q.float() * cos + rotate_half(q.float()) * sin).to(v.dtype)
        k = (k.float() * cos + rotate_half(k.float()) * sin).to(v.dtype)
        return self.Wo(attention(q, k, v, self.backend, self.window).reshape(b, n, c))


class ModernBertMLP(nn.Module):
    def __init__(self, arch: ModernBertArch):
        super().__init__()
        self.act = ACTIVATIONS[arch.activation]
        self.Wi = nn.Linear(arch.hidden, 2 * arch.intermediate, bias=arch.mlp_bias)
        self.Wo = nn.Linear(arch.intermediate, arch.hidden, bias=arch.mlp_bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inputs, gate = self.Wi(x).chunk(2, dim=-1)
        return self.Wo(self.act(inputs) * gate)


class ModernBertLayer(nn.Module):
    def __init__(self, arch: ModernBertArch, index: int, backend: str = "sdpa"):
        """Layer `index` of the saved model (its kind, and whether it has a norm before the attention)."""
        super().__init__()
        self.kind = arch.layer_types[index]
        norm = lambda: nn.LayerNorm(arch.hidden, eps=arch.norm_eps, bias=arch.norm_bias)  # noqa: E731
        self.attn_norm = nn.Identity() if index == 0 else norm()
        self.attn = ModernBertAttention(arch, arch.window if self.kind == "sliding_attention" else None, backend)
        self.mlp_norm = norm()
        self.mlp = ModernBertMLP(arch)

    def forward(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin)
        return x + self.mlp(self.mlp_norm(x))


class ModernBertLayers(nn.Module):
    """The last `count` layers of a ModernBERT, run over a sequence of embeddings (no embedding layer, no final
    norm: InternVideo-Next feeds its own projection into the layers and reads their output)."""

    def __init__(self, arch: ModernBertArch, count: int, backend: str = "sdpa", checkpoint: bool = False):
        super().__init__()
        if not 1 <= count <= arch.depth:
            raise ValueError(f"the predictor takes the last {count} layers of a ModernBERT with {arch.depth}")
        self.arch, self.first, self.checkpoint = arch, arch.depth - count, checkpoint
        self.layers = nn.ModuleList(ModernBertLayer(arch, self.first + i, backend) for i in range(count))

    def set_backend(self, backend: str) -> None:
        for layer in self.layers:
            layer.attn.backend = backend

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(x.shape[1], device=x.device)
        head_dim = self.arch.hidden // self.arch.heads
        tables = {kind: rope_tables(positions, head_dim, self.arch.rope_theta[kind]) for kind in KINDS}
        for layer in self.layers:
            cos, sin = tables[layer.kind]
            if self.checkpoint and self.training and torch.is_grad_enabled():
                x = activation_checkpoint.checkpoint(layer, x, cos, sin, use_reentrant=False)
            else:
                x = layer(x, cos, sin)
        return x

    def load_from(self, path: str | Path) -> int:
        """Load the saved model's last layers (strict: every tensor of them, with its shape); returns the count."""
        from safetensors import safe_open

        path = Path(path)
        files = sorted(path.glob("*.safetensors"))
        if not files:
            raise ValueError(f"predictor directory {path} holds no *.safetensors weights")
        want = {f"layers.{self.first + i}.{k[len(f'{i}.'):]}": k
                for i in range(len(self.layers)) for k in self.layers.state_dict() if k.startswith(f"{i}.")}
        found: dict[str, torch.Tensor] = {}
        for file in files:
            with safe_open(str(file), "pt") as f:
                for key in f.keys():
                    local = key[len("model."):] if key.startswith("model.layers.") else key
                    if local in want:
                        found[want[local]] = f.get_tensor(key)
        expected, saved = self.layers.state_dict(), {ours: theirs for theirs, ours in want.items()}
        missing = [k for k in expected if k not in found]
        wrong = [k for k in found if tuple(found[k].shape) != tuple(expected[k].shape)]
        if missing or wrong:
            said = [f"{len(missing)} tensors missing (e.g. {saved[missing[0]]})" if missing else "",
                    f"{len(wrong)} of another shape (e.g. {saved[wrong[0]]} {list(found[wrong[0]].shape)}, "
                    f"want {list(expected[wrong[0]].shape)})" if wrong else ""]
            raise ValueError(f"predictor directory {path}: its last {len(self.layers)} layers do not fit its "
                             f"config: {'; '.join(s for s in said if s)}")
        self.layers.load_state_dict(found, strict=True)
        return len(found)

    def flops(self, tokens: int) -> float:
        """Forward FLOPs of `tokens` tokens through the layers: projections, GLU MLP and attention's two matmuls
        over each layer's span (the whole sequence, or the window)."""
        h, m = self.arch.hidden, self.arch.intermediate
        total = 0.0
        for layer in self.layers:
            span = tokens if layer.attn.window is None else min(tokens, 2 * layer.attn.window + 1)
            total += 2 * tokens * (4 * h * h + 3 * h * m) + 4 * tokens * span * h
        return total


class Predictor(nn.Module):
    """Encoder tokens (CLS + visible) -> ModernBERT outputs for every place of the token grid (CLS first)."""

    def __init__(self, dim: int, grid: tuple[int, int, int], num_cls: int, layers: ModernBertLayers,
                 train_pos_embed: bool = True):
        super().__init__()
        self.num_cls = num_cls
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.trunc_normal_(self.mask_token, std=0.02)
        self.pos_embed = nn.Parameter(sincos_3d(dim, *grid, cls_token=num_cls).unsqueeze(0),
                                      requires_grad=train_pos_embed)
        self.to_bert_proj = MLPHead(dim, layers.arch.hidden)
        self.bert = layers

    def forward(self, tokens: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
        """tokens (B, cls + N_visible, dim), visible (B, N) -> (B, cls + N, hidden)."""
        b, n = visible.shape
        c = self.num_cls
        # each visible token back at its place, in the order the encoder kept them; the mask token elsewhere
        grid = self.mask_token.to(tokens.dtype).expand(b, n, -1).masked_scatter(visible.unsqueeze(-1), tokens[:, c:])
        x = torch.cat([tokens[:, :c], grid], dim=1) + self.pos_embed.to(tokens.dtype)
        return self.bert(self.to_bert_proj(x))
