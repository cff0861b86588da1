"""InternVideo-Next's diffusion decoder: a per-patch conditional denoiser (MAR's SimpleMLPAdaLN) and the loss and
sampler around it (ivtrain.models.diffusion).

The denoiser maps a noisy patch x_t (C values), its timestep and the predictor's output z for that patch to
2C values (noise, then the learned variance): x -> Linear; y = timestep embedding + Linear(z); `depth` residual
blocks, each LayerNorm -> shift/scale from SiLU+Linear(y) -> Linear-SiLU-Linear -> gated by a third chunk; a final
adaLN-modulated LayerNorm and Linear (DiT's FinalLayer). The adaLN projections and the output layer start at zero,
so an untrained decoder predicts zero noise. Parameter names follow the release (`net.res_blocks.0.mlp.0.weight`).

Everything here computes in float32 even when the weights are bf16 (DeepSpeed's bf16 mode): the diffusion loss
divides by small variances and takes logs of them, which bf16 would round away.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from ivtrain.models.diffusion import GaussianDiffusion


class Fp32Linear(nn.Linear):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.bias.float() if self.bias is not None else None
        return F.linear(x.float(), self.weight.float(), bias)


class Fp32LayerNorm(nn.LayerNorm):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.layer_norm(x.float(), self.normalized_shape, weight, bias, self.eps)


def modulate(x: torch.Tensor, shift: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    return x * (1 + scale) + shift


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) timesteps -> (N, dim) sinusoids: the cosines first, then the sines (GLIDE / DiT)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    return F.pad(emb, (0, dim % 2))


class TimestepEmbedder(nn.Module):
    def __init__(self, width: int, frequencies: int = 256):
        super().__init__()
        self.frequencies = frequencies
        self.mlp = nn.Sequential(Fp32Linear(frequencies, width), nn.SiLU(), Fp32Linear(width, width))

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return self.mlp(timestep_embedding(t, self.frequencies))


class ResBlock(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.in_ln = Fp32LayerNorm(width, eps=1e-6)
        self.mlp = nn.Sequential(Fp32Linear(width, width), nn.SiLU(), Fp32Linear(width, width))
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Fp32Linear(width, 3 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale, gate = self.adaLN_modulation(y).chunk(3, dim=-1)
        return x + gate * self.mlp(modulate(self.in_ln(x), shift, scale))


class FinalLayer(nn.Module):
    def __init__(self, width: int, out_channels: int):
        super().__init__()
        self.norm_final = Fp32LayerNorm(width, elementwise_affine=False, eps=1e-6)
        self.linear = Fp32Linear(width, out_channels)
        self.adaLN_modulation = nn.Sequential(nn.SiLU(), Fp32Linear(width, 2 * width))

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        shift, scale = self.adaLN_modulation(y).chunk(2, dim=-1)
        return self.linear(modulate(self.norm_final(x), shift, scale))


class SimpleMLPAdaLN(nn.Module):
    def __init__(self, channels: int, width: int, z_channels: int, depth: int):
        super().__init__()
        self.time_embed = TimestepEmbedder(width)
        self.cond_embed = Fp32Linear(z_channels, width)
        self.input_proj = Fp32Linear(channels, width)
        self.res_blocks = nn.ModuleList(ResBlock(width) for _ in range(depth))
        self.final_layer = FinalLayer(width, 2 * channels)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.time_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.time_embed.mlp[2].weight, std=0.02)
        zeroed = [b.adaLN_modulation[-1] for b in self.res_blocks]
        zeroed += [self.final_layer.adaLN_modulation[-1], self.final_layer.linear]
        for m in zeroed:
            nn.init.zeros_(m.weight)
            nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor, t: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        y = self.time_embed(t) + self.cond_embed(z)
        x = self.input_proj(x)
        for block in self.res_blocks:
            x = block(x, y)
        return self.final_layer(x, y)


class DiffusionDecoder(nn.Module):
    """The decoder and its diffusion process: `loss` for training, `sample` for reconstruction."""

    def __init__(self, channels: int, z_channels: int, width: int, depth: int, steps: int = 1000,
                 batch_mul: int = 1):
        super().__init__()
        self.channels, self.batch_mul = channels, batch_mul
        self.net = SimpleMLPAdaLN(channels, width, z_channels, depth)
        self.diffusion = GaussianDiffusion.cosine(steps)

    def loss(self, target: torch.Tensor, z: torch.Tensor, t: torch.Tensor,
             noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """target (N, C) patches, z (N, Z) conditions, t (N,) timesteps, noise (N, C): per-patch loss terms (N,)."""
        with torch.autocast(target.device.type, enabled=False):
            return self.diffusion.training_losses(lambda x, s: self.net(x, s, z), target.float(), t, noise.float())

    @torch.no_grad()
    def sample(self, z: torch.Tensor, noise: torch.Tensor, steps: int | None = None,
               generator: torch.Generator | None = None, temperature: float = 1.0,
               clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """DDPM samples (N, C) for conditions z (N, Z), from x_T = noise, over `steps` evenly spaced steps
        (all of them by default); `temperature` scales each step's fresh noise (the release's sampling knob);
        `clip`: the range (low, high) per channel the x_0 estimates are clamped to."""
        diffusion = self.diffusion if steps in (None, self.diffusion.num_timesteps) else self.diffusion.respaced(steps)
        with torch.autocast(z.device.type, enabled=False):
            return diffusion.sample(lambda x, s: self.net(x, s, z), noise.float(), generator, temperature, clip)

