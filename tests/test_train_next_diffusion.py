"""The diffusion decoder's process against closed forms written out here on fixed tensors: the cosine schedule's
alpha-bar, q(x_t | x_0), the posterior q(x_{t-1} | x_t, x_0) (from Gaussian conditioning, not from the
coefficients the code uses), the noise-prediction MSE and the variational-bound term with learned variance; then
sampling, with an oracle denoiser, lands on the data."""
import math

import pytest
import torch

from ivtrain.models.denoiser import DiffusionDecoder, Fp32Linear
from ivtrain.models.diffusion import GaussianDiffusion

T = 1000


def f(s: float) -> float:
    return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2


def alpha_bar(t: int) -> float:
    """The cosine schedule's alpha-bar after steps 0..t: the product of (1 - beta) telescopes to f((t+1)/T) / f(0),
    except that the last beta (1 - f(1)/f(0.999) = 1) is clipped to 0.999."""
    if t == T - 1:
        return f((T - 1) / T) / f(0) * (1 - 0.999)
    return f((t + 1) / T) / f(0)


@pytest.fixture(scope="module")
def process():
    return GaussianDiffusion.cosine(T)


def posterior_variance(t: int) -> float:
    ab_prev = alpha_bar(t - 1) if t else 1.0
    return (1 - alpha_bar(t) / ab_prev) * (1 - ab_prev) / (1 - alpha_bar(t))


def fixed(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_cosine_alpha_bar_at_0_500_999(process):
    table = process.tables["alphas_cumprod"]
    for t in (0, 500, 999):
        assert table[t].item() == pytest.approx(alpha_bar(t), rel=1e-9), t
    assert table[0].item() == pytest.approx(0.99996, abs=1e-5)    # almost no noise at the first step
    assert table[500].item() == pytest.approx(0.4923, abs=1e-4)   # about half way at the middle
    assert table[999].item() < 1e-8                              # pure noise at the end


def test_q_sample_is_sqrt_alpha_bar_x0_plus_sqrt_one_minus_alpha_bar_noise(process):
    x0, noise = fixed(3, 12), fixed(3, 12, seed=1)
    t = torch.tensor([0, 500, 999])
    xt = process.q_sample(x0, t, noise)
    for i, step in enumerate(t.tolist()):
        a = alpha_bar(step)
        assert torch.allclose(xt[i], math.sqrt(a) * x0[i] + math.sqrt(1 - a) * noise[i], atol=1e-6)


def test_posterior_is_the_gaussian_conditional_of_x_t_minus_1(process):
    """q(x_{t-1} | x_t, x_0) ∝ N(x_{t-1}; sqrt(ab') x_0, 1 - ab') N(x_t; sqrt(alpha) x_{t-1}, beta): precision
    1/(1 - ab') + alpha/beta, mean = variance x (sqrt(ab') x_0 / (1 - ab') + sqrt(alpha) x_t / beta)."""
    x0, xt = fixed(3, 8), fixed(3, 8, seed=2)
    t = torch.tensor([1, 500, 998])
    mean, var, log_var = process.q_posterior(x0, xt, t)
    for i, step in enumerate(t.tolist()):
        ab, ab_prev = alpha_bar(step), alpha_bar(step - 1)
        alpha = ab / ab_prev
        beta = 1 - alpha
        want_var = 1.0 / (1.0 / (1 - ab_prev) + alpha / beta)
        want_mean = want_var * (math.sqrt(ab_prev) * x0[i] / (1 - ab_prev) + math.sqrt(alpha) * xt[i] / beta)
        assert var[i].item() == pytest.approx(want_var, rel=1e-5)
        assert log_var[i].item() == pytest.approx(math.log(want_var), rel=1e-5)
        assert torch.allclose(mean[i], want_mean.float(), atol=1e-5)
    # at t = 0 the posterior variance is 0; its log is clipped to t = 1's
    _, var0, log_var0 = process.q_posterior(x0[:1], xt[:1], torch.tensor([0]))
    assert var0.item() == 0 and log_var0.item() == pytest.approx(log_var[0].item())


def normal_cdf_tanh(x):
    return 0.5 * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def test_training_losses_mse_and_the_variational_bound_with_learned_variance(process):
    """A fixed model output (noise estimate, v) -> per-vector MSE of the noise, and the bound term in bits: the KL
    between the true posterior and N(mean of x_0-hat, exp(frac log beta + (1 - frac) log posterior var)), or, at
    t = 0, the discretized Gaussian NLL of x_0 in bins of 2/255."""
    c = 6
    x0, noise = fixed(4, c, seed=3).clamp(-0.9, 0.9), fixed(4, c, seed=4)
    eps, v = fixed(4, c, seed=5), fixed(4, c, seed=6).tanh()
    t = torch.tensor([0, 3, 500, 999])
    output = torch.cat([eps, v], dim=1).requires_grad_(True)
    terms = process.training_losses(lambda x, s: output, x0, t, noise)
    assert torch.allclose(terms["mse"], ((noise - eps) ** 2).mean(1))
    for i, step in enumerate(t.tolist()):
        ab = alpha_bar(step)
        ab_prev = alpha_bar(step - 1) if step else 1.0
        beta = 1 - ab / ab_prev
        xt = math.sqrt(ab) * x0[i] + math.sqrt(1 - ab) * noise[i]
        log_low = math.log(posterior_variance(step or 1))   # clipped at t = 0 to t = 1's
        frac = (v[i] + 1) / 2
        log_var = frac * math.log(beta) + (1 - frac) * log_low
        x0_hat = (xt - math.sqrt(1 - ab) * eps[i]) / math.sqrt(ab)
        c1 = beta * math.sqrt(ab_prev) / (1 - ab)
        c2 = (1 - ab_prev) * math.sqrt(1 - beta) / (1 - ab)
        model_mean = c1 * x0_hat + c2 * xt
        if step == 0:
            inv_std = torch.exp(-0.5 * log_var)
            upper = normal_cdf_tanh(inv_std * (x0[i] - model_mean + 1 / 255))
            lower = normal_cdf_tanh(inv_std * (x0[i] - model_mean - 1 / 255))
            want = -torch.log(upper - lower).mean() / math.log(2)
        else:
            true_mean = c1 * x0[i] + c2 * xt
            true_log_var = math.log(posterior_variance(step))
            kl = 0.5 * (-1 + log_var - true_log_var + math.exp(true_log_var) * torch.exp(-log_var)
                        + (true_mean - model_mean) ** 2 * torch.exp(-log_var))
            want = kl.mean() / math.log(2)
        assert terms["vb"][i].item() == pytest.approx(want.item(), rel=1e-4, abs=1e-5), step
    assert torch.allclose(terms["loss"], terms["mse"] + terms["vb"])
    # the bound trains the variance only: no gradient reaches the noise estimate through it
    (grad,) = torch.autograd.grad(terms["vb"].sum(), output)
    assert grad[:, :c].abs().max() == 0 and grad[:, c:].abs().max() > 0


def test_sampling_with_an_oracle_denoiser_returns_the_data(process):
    """Data that is one point c: the exact noise estimate is (x_t - sqrt(ab) c) / sqrt(1 - ab). DDPM from pure noise,
    over all 1000 steps or 50 respaced ones, ends at c; with the noise estimate zero it does not."""
    c = torch.tensor([0.3, -1.2, 0.7])

    def oracle(diffusion):
        index = {int(s): i for i, s in enumerate(diffusion.timestep_map)}

        def model(x, s):
            t = torch.tensor([index[int(v)] for v in s])
            ab = diffusion.at("alphas_cumprod", t, x)
            eps = (x - ab.sqrt() * c) / (1 - ab).sqrt()
            return torch.cat([eps, torch.zeros_like(x)], dim=1)
        return model

    noise = fixed(64, 3, seed=7)
    for diffusion in (process, process.respaced(50)):
        sample = diffusion.sample(oracle(diffusion), noise, torch.Generator().manual_seed(0))
        assert (sample - c).abs().max() < 1e-3, diffusion.num_timesteps
    blind = process.sample(lambda x, s: torch.zeros(x.shape[0], 6), noise, torch.Generator().manual_seed(0))
    assert (blind - c).abs().max() > 1.0


def test_respacing_keeps_alpha_bar_at_the_steps_it_keeps(process):
    short = process.respaced(10)
    assert short.timestep_map.tolist() == [0, 111, 222, 333, 444, 555, 666, 777, 888, 999]
    assert torch.allclose(short.tables["alphas_cumprod"], process.tables["alphas_cumprod"][short.timestep_map])


def test_the_decoder_computes_in_fp32_with_bf16_weights():
    """Under DeepSpeed's bf16 the decoder's weights are bf16; its loss is still computed in fp32 (the same numbers
    as an fp32 decoder holding the bf16-rounded weights), and gradients reach the bf16 weights."""
    torch.manual_seed(0)
    decoder = DiffusionDecoder(channels=12, z_channels=8, width=32, depth=2)
    for m in decoder.modules():   # give the zero-initialized layers weights, so that every part computes
        if isinstance(m, Fp32Linear):
            torch.nn.init.normal_(m.weight, std=0.2)
    rounded = DiffusionDecoder(channels=12, z_channels=8, width=32, depth=2)
    decoder = decoder.to(torch.bfloat16)
    rounded.load_state_dict({k: v.float() for k, v in decoder.state_dict().items()})
    target, z, noise = fixed(5, 12), fixed(5, 8, seed=1).bfloat16(), fixed(5, 12, seed=2)
    t = torch.tensor([0, 10, 400, 800, 999])
    ours = decoder.loss(target, z, t, noise)
    want = rounded.loss(target, z.float(), t, noise)
    for k in ("mse", "vb", "loss"):
        assert ours[k].dtype == torch.float32
        assert torch.equal(ours[k], want[k]), k
    ours["loss"].mean().backward()
    grad = decoder.net.res_blocks[0].mlp[0].weight.grad
    assert grad is not None and grad.dtype == torch.bfloat16 and grad.abs().max() > 0
