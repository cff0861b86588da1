"""The InternVideo2 ViT and its attention backends (SDPA always; flash-attn where CUDA has it)."""
import math

from pathlib import Path

import numpy as np
import pytest
import torch

# 2 shared cores: a second intra-op thread only contends (tiny models run ~15x faster on one)
torch.set_num_threads(1)

from ivtrain.models.vit import ViTConfig
from ivtrain.models.attention import attention, flash_attn_func, resolve_backend
from ivtrain.models.layers import RMSNorm
from ivtrain.models.pos_embed import sincos_3d
from ivtrain.models.vit import InternVideo2


def reference_attention(q, k, v):
    s = torch.einsum("bnhd,bmhd->bhnm", q, k) / math.sqrt(q.shape[-1])
    return torch.einsum("bhnm,bmhd->bnhd", s.softmax(-1), v)


def test_sdpa_matches_softmax_attention():
    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 17, 4, 16) for _ in range(3))
    torch.testing.assert_close(attention(q, k, v, "sdpa"), reference_attention(q, k, v), atol=1e-5, rtol=1e-5)


def test_backend_choice_on_cpu():
    assert resolve_backend("auto", torch.device("cpu")) == "sdpa"
    with pytest.raises(RuntimeError, match="needs CUDA"):
        resolve_backend("flash", torch.device("cpu"))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="flash-attn comparison needs CUDA (none on this machine)")
def test_flash_matches_sdpa_in_bf16():
    if flash_attn_func() is None:
        pytest.skip("flash_attn is not importable on this CUDA machine")
    torch.manual_seed(0)
    model = InternVideo2(ViTConfig(size="tiny", attn_backend="sdpa"), device=torch.device("cuda")).cuda().bfloat16()
    video = torch.randn(2, 3, 4, 32, 32, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        ref = model(video).tokens.float()
        model.set_backend("flash")
        out = model(video).tokens.float()
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="fused attention kernels need CUDA")
def test_sdpa_fused_kernels_match_math_in_bf16():
    """Where flash_attn does not import, SDPA's own fused kernels (FlashAttention-2 and memory-efficient)
    serve: the model's bf16 outputs through each match those of the unfused math kernel."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    torch.manual_seed(0)
    model = InternVideo2(ViTConfig(size="tiny", attn_backend="sdpa"), device=torch.device("cuda")).cuda().bfloat16()
    video = torch.randn(2, 3, 4, 32, 32, device="cuda", dtype=torch.bfloat16)
    with torch.no_grad():
        with sdpa_kernel(SDPBackend.MATH):
            ref = model(video).tokens.float()
        for backend in (SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION):
            with sdpa_kernel(backend):
                out = model(video).tokens.float()
            torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2, msg=str(backend))


def tiny(**kw):
    torch.manual_seed(0)
    return InternVideo2(ViTConfig(size="tiny", **kw))


def test_shapes_norms_and_layerscale():
    m = tiny()
    assert m.grid == (4, 4, 4) and m.num_patches == 64
    blk = m.blocks[0]
    assert isinstance(blk.norm1, RMSNorm) and isinstance(blk.attn.q_norm, RMSNorm)
    assert blk.attn.q_norm.weight.shape == (64,)  # QK-norm over the full width
    assert torch.all(blk.ls1.gamma == 0.1)
    out = m(torch.randn(2, 3, 4, 32, 32), return_layers=(1, 3))
    assert out.tokens.shape == (2, 65, 64) and out.pooled.shape == (2, 64) and set(out.layers) == {1, 3}


def released_sincos_3d(dim, grid, frames):
    """The released table (get_3d_sincos_pos_embed of InternVideo2's pos_embed.py), written out from its
    definition: [time: dim/4 | the meshgrid's first plane, the column index: 3dim/8 | the row index: 3dim/8],
    each part [sin | cos] of position x 10000^(-i / (part / 2)); tokens in (t, row, column) order."""
    def part(width, positions):
        omega = 1.0 / 10000 ** (np.arange(width // 2) / (width / 2.0))
        angles = np.outer(positions.reshape(-1), omega)
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    cols, rows = np.meshgrid(np.arange(grid), np.arange(grid))        # numpy's default "xy" indexing
    spatial = np.concatenate([part(dim // 8 * 3, cols), part(dim // 8 * 3, rows)], axis=1)
    temporal = part(dim // 4, np.arange(frames))
    rows_out = [np.concatenate([temporal[t], spatial[i]]) for t in range(frames) for i in range(grid * grid)]
    return np.concatenate([np.zeros((1, dim)), np.stack(rows_out)])


def test_pos_embed_follows_the_released_channel_order():
    table = sincos_3d(64, 4, 4, 4)
    assert table.shape == (65, 64) and torch.all(table[0] == 0)
    assert torch.unique(table[1:], dim=0).shape[0] == 64  # every (t, h, w) gets its own code
    torch.testing.assert_close(table, torch.from_numpy(released_sincos_3d(64, 4, 4)).float())
    # frames at the same (h, w) share the spatial channels and differ in the temporal (first) ones
    assert torch.equal(table[1, 16:], table[1 + 16, 16:]) and not torch.equal(table[1, :16], table[1 + 16, :16])


def test_visible_subset_matches_full_run_when_everything_is_visible():
    m = tiny().eval()
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        full = m(video).tokens
        same = m(video, torch.ones(2, 64, dtype=torch.bool)).tokens
        part = m(video, torch.arange(64).expand(2, 64) % 4 == 0).tokens
    torch.testing.assert_close(full, same)
    assert part.shape == (2, 17, 64)


def test_activation_checkpointing_gives_the_same_gradients():
    video = torch.randn(2, 3, 4, 32, 32)
    grads = []
    for ckpt in (False, True):
        m = tiny(checkpoint_activations=ckpt).train()
        m(video).pooled.square().sum().backward()
        grads.append(m.blocks[0].attn.qkv.weight.grad.clone())
    torch.testing.assert_close(grads[0], grads[1], atol=1e-6, rtol=1e-5)


def test_flop_count_of_vit_b_matches_torch_flop_counter():
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    m = InternVideo2(ViTConfig(size="b", num_frames=1, img_size=224, patch_size=16, depth=1))
    ours = m.flops_per_sample()  # one block + patch embedding + attention pooling, 197 tokens, one 224 image
    # ViT-B/16 is ~17.6 G multiply-adds over 12 blocks: ~2.9 GFLOPs per block, plus 0.23 for the embedding
    assert 2.9e9 < ours - 2 * 197 * 2 * 768 * 768 < 3.4e9
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counted, torch.no_grad():
        m(torch.randn(1, 3, 1, 224, 224))
    assert ours == pytest.approx(counted.get_total_flops(), rel=0.01)


def test_param_groups_layer_decay_and_schedule():
    from ivtrain.config import OptimConfig
    from ivtrain.objectives.base import Tower, tower_param_groups
    from ivtrain.optim import lr_factor, resolve_schedule

    def param_groups(module, cfg):
        return tower_param_groups(module, [Tower("")], cfg, cfg.lr)

    m = tiny()
    cfg = OptimConfig(lr=1e-3, min_lr=1e-5, weight_decay=0.05, warmup_steps=10, layer_decay=0.5)
    groups = param_groups(m, cfg)
    schedule = resolve_schedule(cfg, steps=100, epochs=0, global_batch=8, samples_per_epoch=80)
    by_param = {id(p): g for g in groups for p in g["params"]}
    assert by_param[id(m.blocks[3].attn.qkv.weight)]["lr_scale"] == 0.5       # last block: one step below the top
    assert by_param[id(m.blocks[0].attn.qkv.weight)]["lr_scale"] == 0.5 ** 4
    assert by_param[id(m.patch_embed.proj.weight)]["lr_scale"] == 0.5 ** 5     # embeddings decay the most
    assert by_param[id(m.blocks[0].norm1.weight)]["weight_decay"] == 0.0       # norms, biases, tokens: no decay
    assert by_param[id(m.cls_token)]["weight_decay"] == 0.0
    assert by_param[id(m.blocks[0].mlp.fc1.weight)]["weight_decay"] == 0.05
    # the position table is trained (sin-cos start), without weight decay, with the embeddings' lr
    assert m.pos_embed.requires_grad and by_param[id(m.pos_embed)]["weight_decay"] == 0.0
    assert by_param[id(m.pos_embed)]["lr_scale"] == 0.5 ** 5
    assert id(tiny(train_pos_embed=False).pos_embed) not in {id(p) for g in param_groups(tiny(train_pos_embed=False), cfg)
                                                              for p in g["params"]}
    # warmup from 0 to the peak at its last step, as numpy's linspace(0, peak, 10)
    assert lr_factor(0, schedule) == 0.0 and lr_factor(9, schedule) == 1.0 and lr_factor(3, schedule) == 3 / 9
    assert lr_factor(100, schedule) == pytest.approx(1e-2)                      # min_lr / lr at the end
    assert lr_factor(55, schedule) == pytest.approx(0.01 + 0.99 * 0.5)          # half-way down the cosine


def released_cosine_schedule(base, final, epochs, iters_per_epoch, warmup_epochs):
    """utils.cosine_scheduler of the released stage-1 code, written out: linspace(0, base, warmup) then
    final + (base - final) (1 + cos(pi i / n)) / 2 for i in 0..n-1."""
    warmup = warmup_epochs * iters_per_epoch
    n = epochs * iters_per_epoch - warmup
    i = np.arange(n)
    return np.concatenate([np.linspace(0, base, warmup), final + 0.5 * (base - final) * (1 + np.cos(np.pi * i / n))])


def test_the_1b_recipe_reproduces_the_released_lr_schedule_at_its_global_batch():
    """The release: 128 GPUs x 32 clips on K-Mash 1.1M (1,100,000 clips: 268 steps an epoch), lr 1.5e-4 and min
    lr 1e-5 per 256 samples, 40 warmup epochs of 301."""
    from ivtrain.config import load_recipe
    from ivtrain.optim import lr_factor, resolve_schedule

    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "iv2_stage1_1b.yaml")
    global_batch = r.data.batch_size * r.train.grad_accum * 128
    assert global_batch == 4096
    schedule = resolve_schedule(r.optim, r.train.steps, r.train.epochs, global_batch, samples_per_epoch=1_100_000)
    assert schedule.peak_lr == pytest.approx(2.4e-3) and schedule.min_lr == pytest.approx(1.6e-4)
    assert (schedule.warmup_steps, schedule.total_steps) == (40 * 268, 301 * 268)
    ours = np.array([schedule.peak_lr * lr_factor(i, schedule) for i in range(schedule.total_steps)])
    released = released_cosine_schedule(2.4e-3, 1.6e-4, 301, 268, 40)
    np.testing.assert_allclose(ours, released, rtol=1e-9, atol=1e-15)
    # and on 8 GPUs the lr scales down with the global batch
    small = resolve_schedule(r.optim, r.train.steps, r.train.epochs, 256, samples_per_epoch=1_100_000)
    assert small.peak_lr == pytest.approx(1.5e-4) and small.total_steps == 301 * (1_100_000 // 256)


def test_flash_path_hands_the_kernel_bf16_in_its_layout_and_matches_sdpa(monkeypatch):
    """The flash branch without CUDA: a stand-in kernel with flash_attn_func's contract ((B, N, H, D),
    fp16/bf16 only, softmax scale 1/sqrt(D)) checks what the model hands it, so a layout or dtype slip in
    the wrapper fails here and not first on a GPU. The real kernel is compared in the CUDA test above."""
    import ivtrain.models.attention as attention_module

    calls = []

    def kernel(q, k, v, dropout_p, causal, window_size=(-1, -1)):
        assert q.dtype in (torch.float16, torch.bfloat16) and q.shape == k.shape == v.shape
        assert dropout_p == 0.0 and causal is False and window_size == (-1, -1)   # the ViT attends to every token
        calls.append(tuple(q.shape))
        return reference_attention(q.float(), k.float(), v.float()).to(q.dtype)

    monkeypatch.setattr(attention_module, "flash_attn_func", lambda: kernel)
    m = tiny().eval()
    video = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ref = m(video).tokens
        m.set_backend("flash")
        out = m(video).tokens
    assert out.dtype == torch.float32
    assert calls and all(shape == (2, 65, m.blocks[0].attn.num_heads, 64 // m.blocks[0].attn.num_heads)
                         for shape in calls)
    torch.testing.assert_close(out, ref, atol=3e-2, rtol=3e-2)
