"""Gaussian diffusion over per-patch vectors, as InternVideo-Next's diffusion decoder trains and samples it (the
improved-DDPM formulation of Nichol & Dhariwal, which MAR's per-token "diffusion loss" uses):

- a cosine schedule over 1000 steps: alpha_bar(s) = cos^2((s + 0.008) / 1.008 * pi / 2), beta_t =
  min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), 0.999);
- q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I), and the posterior q(x_{t-1} | x_t, x_0);
- the model predicts the noise and, in its second half of channels, v in [-1, 1] that interpolates the log
  variance between the posterior's and beta_t ("learned range");
- the training loss per vector: MSE of the noise + the variational-bound term in bits (the KL between the true
  posterior and the model's, or the discretized decoder NLL at t = 0), the bound seeing the mean through a
  stop-gradient so that it trains the variance only;
- ancestral (DDPM) sampling over all steps or an evenly respaced subset of them.

Tables are float64, read out per vector as float32. Noise and timesteps always come from the caller (the objective
draws them from per-clip seeds), so a replayed step replays its loss exactly.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from ivtrain.data.masking import clip_generator

LOG2 = math.log(2.0)


def cosine_alpha_bar(s: float) -> float:
    """The cosine schedule's cumulative signal fraction at s = t / T in [0, 1]."""
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def cosine_betas(steps: int, max_beta: float = 0.999) -> np.ndarray:
    return np.array([min(1.0 - cosine_alpha_bar((i + 1) / steps) / cosine_alpha_bar(i / steps), max_beta)
                     for i in range(steps)], dtype=np.float64)


def normal_kl(mean1, logvar1, mean2, logvar2) -> torch.Tensor:
    """KL(N(mean1, e^logvar1) || N(mean2, e^logvar2)), elementwise, in nats."""
    return 0.5 * (-1.0 + logvar2 - logvar1 + torch.exp(logvar1 - logvar2) + (mean1 - mean2) ** 2 * torch.exp(-logvar2))


def approx_standard_normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x ** 3)))


def discretized_gaussian_log_likelihood(x: torch.Tensor, mean: torch.Tensor, log_scale: torch.Tensor) -> torch.Tensor:
    """log P(x) of a Gaussian integrated over x's bin of width 2/255 (values in [-1, 1]; the end bins open)."""
    centered, inv_std = x - mean, torch.exp(-log_scale)
    cdf_plus = approx_standard_normal_cdf(inv_std * (centered + 1.0 / 255.0))
    cdf_min = approx_standard_normal_cdf(inv_std * (centered - 1.0 / 255.0))
    log_cdf_plus = torch.log(cdf_plus.clamp(min=1e-12))
    log_one_minus_cdf_min = torch.log((1.0 - cdf_min).clamp(min=1e-12))
    log_delta = torch.log((cdf_plus - cdf_min).clamp(min=1e-12))
    return torch.where(x < -0.999, log_cdf_plus, torch.where(x > 0.999, log_one_minus_cdf_min, log_delta))


def evenly_spaced(num_timesteps: int, count: int) -> list[int]:
    """`count` of the steps 0..num_timesteps-1, evenly spread, first and last included."""
    if not 1 <= count <= num_timesteps:
        raise ValueError(f"cannot sample with {count} of {num_timesteps} diffusion steps")
    stride = (num_timesteps - 1) / (count - 1) if count > 1 else 1
    return sorted({round(i * stride) for i in range(count)})


def training_draws(seeds: list[int] | None, clips: int, count: int, channels: int, steps: int,
                   stream: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Timesteps (clips, count) uniform in [0, steps) and noise (clips, count, channels) for the training loss:
    each clip's from its own seed on its own random stream (a replayed step replays its loss, whichever rank or
    batch position the clip has), or from the global RNG without seeds."""
    if seeds is None:
        return torch.randint(0, steps, (clips, count)), torch.randn(clips, count, channels)
    generators = [clip_generator(seed, stream) for seed in seeds]
    t = torch.stack([torch.randint(0, steps, (count,), generator=g) for g in generators])
    return t, torch.stack([torch.randn(count, channels, generator=g) for g in generators])


# a denoiser: (x_t (N, C), model timesteps (N,)) -> (N, 2C): predicted noise, then v in [-1, 1]
Denoiser = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class GaussianDiffusion:
    def __init__(self, betas: np.ndarray, timestep_map: list[int] | None = None):
        b = np.asarray(betas, dtype=np.float64)
        self.num_timesteps = len(b)
        ab = np.cumprod(1.0 - b)
        ab_prev = np.append(1.0, ab[:-1])
        posterior_variance = b * (1.0 - ab_prev) / (1.0 - ab)
        tables = {
            "betas": b, "log_betas": np.log(b), "alphas_cumprod": ab, "alphas_cumprod_prev": ab_prev,
            "sqrt_alphas_cumprod": np.sqrt(ab), "sqrt_one_minus_alphas_cumprod": np.sqrt(1.0 - ab),
            "sqrt_recip_alphas_cumprod": np.sqrt(1.0 / ab), "sqrt_recipm1_alphas_cumprod": np.sqrt(1.0 / ab - 1.0),
            "posterior_variance": posterior_variance,
            # the posterior variance is 0 at t = 0: its log takes t = 1's value there
            "posterior_log_variance_clipped": np.log(np.append(posterior_variance[1], posterior_variance[1:])),
            "posterior_mean_coef1": b * np.sqrt(ab_prev) / (1.0 - ab),
            "posterior_mean_coef2": (1.0 - ab_prev) * np.sqrt(1.0 - b) / (1.0 - ab),
        }
        self.tables = {k: torch.from_numpy(v) for k, v in tables.items()}
        # the step each index stands for in the schedule the model was trained on (respaced sampling)
        self.timestep_map = torch.tensor(timestep_map if timestep_map is not None else range(len(b)))

    @classmethod
    def cosine(cls, steps: int = 1000) -> GaussianDiffusion:
        return cls(cosine_betas(steps))

    def respaced(self, count: int) -> GaussianDiffusion:
        """The same process on `count` of its steps: betas recomputed so that alpha_bar is kept at each of them."""
        use = evenly_spaced(self.num_timesteps, count)
        ab = self.tables["alphas_cumprod"].numpy()
        previous, betas = 1.0, []
        for t in use:
            betas.append(1.0 - ab[t] / previous)
            previous = ab[t]
        return GaussianDiffusion(np.array(betas), [int(self.timestep_map[t]) for t in use])

    def at(self, name: str, t: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        """The table `name` at timesteps t (N,), as float32 broadcastable against `like` (N, ...)."""
        values = self.tables[name].to(t.device)[t].float()
        return values.reshape(-1, *([1] * (like.dim() - 1)))

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.at("sqrt_alphas_cumprod", t, x0) * x0 + self.at("sqrt_one_minus_alphas_cumprod", t, x0) * noise

    def q_posterior(self, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor):
        """Mean, variance and clipped log variance of q(x_{t-1} | x_t, x_0)."""
        mean = self.at("posterior_mean_coef1", t, xt) * x0 + self.at("posterior_mean_coef2", t, xt) * xt
        return mean, self.at("posterior_variance", t, xt), self.at("posterior_log_variance_clipped", t, xt)

    def p_mean_variance(self, output: torch.Tensor, xt: torch.Tensor, t: torch.Tensor,
                        clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
        """The model's p(x_{t-1} | x_t) from its output (N, 2C): mean, log variance and its estimate of x_0
        (clamped to [low, high] per channel with `clip`, the range the data can take)."""
        eps, v = output.split(xt.shape[-1], dim=-1)
        low, high = self.at("posterior_log_variance_clipped", t, xt), self.at("log_betas", t, xt)
        frac = (v + 1.0) / 2.0
        log_variance = frac * high + (1.0 - frac) * low
        pred_x0 = self.at("sqrt_recip_alphas_cumprod", t, xt) * xt - self.at("sqrt_recipm1_alphas_cumprod", t, xt) * eps
        if clip is not None:
            pred_x0 = torch.maximum(torch.minimum(pred_x0, clip[1]), clip[0])
        mean, _, _ = self.q_posterior(pred_x0, xt, t)
        return {"mean": mean, "log_variance": log_variance, "pred_x0": pred_x0}

    def vb_term(self, output: torch.Tensor, x0: torch.Tensor, xt: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        """(N,) bits per dimension: KL(q(x_{t-1} | x_t, x_0) || p(x_{t-1} | x_t)), the decoder NLL where t = 0."""
        true_mean, _, true_log_variance = self.q_posterior(x0, xt, t)
        p = self.p_mean_variance(output, xt, t)
        kl = normal_kl(true_mean, true_log_variance, p["mean"], p["log_variance"]).mean(-1) / LOG2
        nll = -discretized_gaussian_log_likelihood(x0, p["mean"], 0.5 * p["log_variance"]).mean(-1) / LOG2
        return torch.where(t == 0, nll, kl)

    def training_losses(self, model: Denoiser, x0: torch.Tensor, t: torch.Tensor,
                        noise: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per vector (N,): mse (of the predicted noise), vb (variance only: the mean is detached), loss = sum."""
        xt = self.q_sample(x0, t, noise)
        output = model(xt, self.timestep_map.to(t.device)[t])
        eps, v = output.split(x0.shape[-1], dim=-1)
        vb = self.vb_term(torch.cat([eps.detach(), v], dim=-1), x0, xt, t)
        mse = ((noise - eps) ** 2).mean(-1)
        return {"mse": mse, "vb": vb, "loss": mse + vb}

    @torch.no_grad()
    def sample(self, model: Denoiser, noise: torch.Tensor, generator: torch.Generator | None = None,
               temperature: float = 1.0, clip: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:
        """Ancestral sampling from x_T = noise (N, C) down to x_0; the fresh noise of each step from `generator`
        (on the CPU, so a seed gives the same sample on any device). `clip`: (low, high) per channel, each step's
        estimate of x_0 is clamped to it (improved DDPM's clip_denoised, there for data in [-1, 1]): the first
        steps divide the noise estimate's error by sqrt(alpha_bar) ~ 5e-5, and without the clamp an imperfect
        denoiser's chain runs away."""
        x = noise
        for i in reversed(range(self.num_timesteps)):
            t = torch.full((x.shape[0],), i, dtype=torch.long, device=x.device)
            p = self.p_mean_variance(model(x, self.timestep_map.to(x.device)[t]), x, t, clip)
            if i == 0:
                return p["mean"]
            z = torch.randn(x.shape, generator=generator).to(x.device)
            x = p["mean"] + torch.exp(0.5 * p["log_variance"]) * z * temperature
        return x
