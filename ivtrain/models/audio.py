"""The frozen audio tower of InternVideo2 stage 2 (its 6B model): BEATs (Chen et al., 2022), built from and loaded
strictly out of a released BEATs checkpoint file, `{"cfg": {...}, "model": state dict}`, under the release's
parameter names.

What the released configuration (BEATs_iter3: 16 x 16 patches, 512 -> 768 wide, 12 layers) computes:
1. the Kaldi fbank (frames, mel bins), normalized by the caller as the release does ((x - 15.41663) / (2 x 6.55582),
   `normalize_fbank`), is cut into 16 x 16 patches by a Conv2d (`patch_embedding`), LayerNorm (`layer_norm`), then
   Linear 512 -> 768 (`post_extract_proj`); tokens run time-major (every frequency patch of the first 16 frames,
   then the next 16 frames);
2. a convolutional position embedding is added: a grouped Conv1d over time (kernel 128, 16 groups) whose weight is
   weight-normalized over the kernel axis (`encoder.pos_conv.0.weight_g` (1, 1, 128) x direction `weight_v`),
   its last output dropped so that the length stays, GELU; then LayerNorm (`encoder.layer_norm`);
3. post-norm layers with DeepNorm (each residual scaled by (2 x layers)^(1/4)): attention whose logits carry a
   relative position bias (T5's log buckets: `num_buckets` over distances up to `max_distance`, one table that
   every layer shares and every layer's name stores) multiplied, per head and query, by a gate computed from that
   query (`grep_linear`, `grep_a`: gru_rel_pos), then a GELU MLP.
The tokens' mean is the pooled audio feature stage 2 projects (`audio_proj`).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.convert import ConversionError, ShapeReport, compare

FBANK_MEAN, FBANK_STD = 15.41663, 6.55582   # the release's fbank statistics (AudioSet)
DEFAULTS = dict(input_patch_size=16, embed_dim=512, conv_bias=False, encoder_layers=12, encoder_embed_dim=768,
                encoder_ffn_embed_dim=3072, encoder_attention_heads=12, activation_fn="gelu", layer_norm_first=False,
                deep_norm=False, conv_pos=128, conv_pos_groups=16, relative_position_embedding=False,
                num_buckets=320, max_distance=1280, gru_rel_pos=False, finetuned_model=False, predictor_class=527)


class AudioTowerError(ValueError):
    """An audio encoder file that is not a BEATs checkpoint this tower can hold."""


def normalize_fbank(fbank: torch.Tensor) -> torch.Tensor:
    return (fbank - FBANK_MEAN) / (2 * FBANK_STD)


class PositionConv(nn.Module):
    """Grouped Conv1d over time with its weight normalized over the kernel axis (weight = g v / |v| per tap)."""

    def __init__(self, width: int, kernel: int, groups: int):
        super().__init__()
        self.kernel, self.groups = kernel, groups
        self.weight_g = nn.Parameter(torch.ones(1, 1, kernel))
        self.weight_v = nn.Parameter(torch.randn(width, width // groups, kernel) * math.sqrt(4 / (kernel * width)))
        self.bias = nn.Parameter(torch.zeros(width))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, L, C) -> (B, L, C)"""
        v = self.weight_v
        weight = v * (self.weight_g / v.norm(dim=(0, 1), keepdim=True))
        y = F.conv1d(x.transpose(1, 2), weight, self.bias, padding=self.kernel // 2, groups=self.groups)
        if self.kernel % 2 == 0:   # an even kernel gives one output too many
            y = y[:, :, :-1]
        return F.gelu(y).transpose(1, 2)


def relative_buckets(length: int, num_buckets: int, max_distance: int) -> torch.Tensor:
    """(L, L) bucket of key position j for query i: half the buckets per sign of j - i; distances below a quarter
    of the buckets get one bucket each, longer ones share buckets spaced logarithmically up to max_distance."""
    distance = torch.arange(length)[None, :] - torch.arange(length)[:, None]
    half = num_buckets // 2
    exact = half // 2
    bucket = (distance > 0).long() * half
    distance = distance.abs()
    far = exact + (torch.log(distance.float().clamp_min(1) / exact) / math.log(max_distance / exact)
                   * (half - exact)).long()
    return bucket + torch.where(distance < exact, distance, far.clamp_max(half - 1))


class SelfAttention(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        c, self.heads = cfg["encoder_embed_dim"], cfg["encoder_attention_heads"]
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(c, c) for _ in range(4))
        self.gated = cfg["gru_rel_pos"]
        if self.gated:
            self.grep_linear = nn.Linear(c // self.heads, 8)
            self.grep_a = nn.Parameter(torch.ones(1, self.heads, 1, 1))

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        """x (B, L, C); position_bias (H, L, L) or None."""
        b, n, c = x.shape
        split = lambda t: t.reshape(b, n, self.heads, c // self.heads).transpose(1, 2)  # noqa: E731
        q, k, v = split(self.q_proj(x)), split(self.k_proj(x)), split(self.v_proj(x))
        bias = None
        if position_bias is not None:
            bias = position_bias[None].to(q.dtype)
            if self.gated:   # per head and query: a = sig(sum of 4), b = sig(sum of the other 4); gate a(b g - 1) + 2
                gate_a, gate_b = torch.sigmoid(self.grep_linear(q).reshape(b, self.heads, n, 2, 4).sum(-1)).chunk(2, -1)
                bias = (gate_a * (gate_b * self.grep_a - 1.0) + 2.0) * bias
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, c))


class EncoderLayer(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        c = cfg["encoder_embed_dim"]
        self.self_attn = SelfAttention(cfg)
        self.self_attn_layer_norm = nn.LayerNorm(c)
        self.fc1 = nn.Linear(c, cfg["encoder_ffn_embed_dim"])
        self.fc2 = nn.Linear(cfg["encoder_ffn_embed_dim"], c)
        self.final_layer_norm = nn.LayerNorm(c)
        self.pre_norm = cfg["layer_norm_first"]
        self.alpha = (2 * cfg["encoder_layers"]) ** 0.25 if cfg["deep_norm"] else 1.0

    def forward(self, x: torch.Tensor, position_bias: torch.Tensor | None) -> torch.Tensor:
        mlp = lambda h: self.fc2(F.gelu(self.fc1(h)))  # noqa: E731
        if self.pre_norm:
            x = x + self.self_attn(self.self_attn_layer_norm(x), position_bias)
            return x + mlp(self.final_layer_norm(x))
        x = self.self_attn_layer_norm(x * self.alpha + self.self_attn(x, position_bias))
        return self.final_layer_norm(x * self.alpha + mlp(x))


class Encoder(nn.Module):
    def __init__(self, cfg: dict):
        super().__init__()
        c = cfg["encoder_embed_dim"]
        self.pos_conv = nn.ModuleList([PositionConv(c, cfg["conv_pos"], cfg["conv_pos_groups"])])
        self.layers = nn.ModuleList(EncoderLayer(cfg) for _ in range(cfg["encoder_layers"]))
        self.layer_norm = nn.LayerNorm(c)
        self.pre_norm = cfg["layer_norm_first"]
        self.relative = cfg["relative_position_embedding"]
        if self.relative:   # one table for all layers, registered (and so stored) under every layer's name
            table = nn.Embedding(cfg["num_buckets"], cfg["encoder_attention_heads"])
            for layer in self.layers:
                layer.self_attn.relative_attention_bias = table
            self.buckets = (cfg["num_buckets"], cfg["max_distance"])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.pos_conv[0](x)
        if not self.pre_norm:
            x = self.layer_norm(x)
        bias = None
        if self.relative:
            table = self.layers[0].self_attn.relative_attention_bias
            bias = table(relative_buckets(x.shape[1], *self.buckets).to(x.device)).permute(2, 0, 1)
        for layer in self.layers:
            x = layer(x, bias)
        return self.layer_norm(x) if self.pre_norm else x


class BEATs(nn.Module):
    """fbank (B, frames, mel bins), normalized -> tokens (B, frames/16 x bins/16, width)."""

    def __init__(self, cfg: dict):
        super().__init__()
        cfg = {**DEFAULTS, **cfg}
        if cfg["activation_fn"] != "gelu":
            raise AudioTowerError(f"BEATs activation {cfg['activation_fn']!r}: only gelu (the released one) is built")
        self.cfg, p, e = cfg, cfg["input_patch_size"], cfg["embed_dim"]
        self.patch_embedding = nn.Conv2d(1, e, kernel_size=p, stride=p, bias=cfg["conv_bias"])
        self.layer_norm = nn.LayerNorm(e)
        if e != cfg["encoder_embed_dim"]:
            self.post_extract_proj = nn.Linear(e, cfg["encoder_embed_dim"])
        self.encoder = Encoder(cfg)
        if cfg["finetuned_model"]:   # the AudioSet classifier of a fine-tuned checkpoint: loaded, not used here
            self.predictor = nn.Linear(cfg["encoder_embed_dim"], cfg["predictor_class"])

    @property
    def width(self) -> int:
        return self.cfg["encoder_embed_dim"]

    def tokens_of(self, frames: int, bins: int) -> int:
        p = self.cfg["input_patch_size"]
        return (frames // p) * (bins // p)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        x = self.patch_embedding(fbank.unsqueeze(1).to(self.patch_embedding.weight.dtype))   # (B, E, T/p, F/p)
        x = self.layer_norm(x.flatten(2).transpose(1, 2))
        if hasattr(self, "post_extract_proj"):
            x = self.post_extract_proj(x)
        return self.encoder(x)

    def flops(self, frames: int, bins: int) -> float:
        """Forward FLOPs of one clip's fbank."""
        n, c, f = self.tokens_of(frames, bins), self.width, self.cfg["encoder_ffn_embed_dim"]
        p, e = self.cfg["input_patch_size"], self.cfg["embed_dim"]
        layers = self.cfg["encoder_layers"] * (2 * n * (4 * c * c + 2 * c * f) + 4 * n * n * c)
        conv = 2 * n * c * (c // self.cfg["conv_pos_groups"]) * self.cfg["conv_pos"]
        return float(2 * n * p * p * e + 2 * n * e * c + conv + layers)


def beats_file(path: str | Path) -> Path:
    """The checkpoint file: `path` itself, or the one .pt / .pth file in the directory `path`."""
    path = Path(path)
    if path.is_file():
        return path
    if not path.is_dir():
        raise AudioTowerError(f"audio encoder {path} does not exist")
    files = sorted(p for p in path.iterdir() if p.suffix in (".pt", ".pth"))
    if len(files) != 1:
        raise AudioTowerError(f"audio encoder directory {path} should hold one BEATs checkpoint (.pt), "
                              f"found {len(files)}")
    return files[0]


def load_beats(path: str | Path) -> tuple[BEATs, ShapeReport]:
    """BEATs from a released checkpoint file (or a directory holding one): the architecture from its `cfg`, every
    weight strictly (a missing, unexpected or mis-shaped tensor raises with the report). Frozen, in eval mode."""
    file = beats_file(path)
    try:
        checkpoint = torch.load(file, map_location="cpu", weights_only=True)
    except Exception as e:   # not a torch file, or one holding more than tensors and plain values
        raise AudioTowerError(f"{file} is not a BEATs checkpoint torch can load safely ({type(e).__name__})") from None
    if not isinstance(checkpoint, dict) or not {"cfg", "model"} <= set(checkpoint):
        raise AudioTowerError(f"{file} is not a released BEATs checkpoint (a dict with 'cfg' and 'model')")
    tower = BEATs(dict(checkpoint["cfg"]))
    report = compare(checkpoint["model"], {k: v.shape for k, v in tower.state_dict().items()})
    if not report.ok:
        raise ConversionError(f"{file} does not fit the BEATs it configures:\n{report}")
    tower.load_state_dict(checkpoint["model"], strict=True)
    tower.requires_grad_(False)
    return tower.eval(), report


def save_tiny_beats(path: str | Path, seed: int = 0, **cfg) -> Path:
    """A randomly initialized small BEATs in the released file layout (tests, the tiny recipes)."""
    torch.manual_seed(seed)
    cfg = {**dict(input_patch_size=8, embed_dim=32, encoder_layers=2, encoder_embed_dim=48, encoder_ffn_embed_dim=96,
                  encoder_attention_heads=4, deep_norm=True, conv_pos=16, conv_pos_groups=4,
                  relative_position_embedding=True, num_buckets=32, max_distance=64, gru_rel_pos=True), **cfg}
    tower = BEATs(cfg)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    torch.save({"cfg": {**DEFAULTS, **cfg}, "model": tower.state_dict()}, path / "beats.pt")
    return path
