"""A vision tower trained at one frame count and resolution loads at another, and as an image tower, strictly: its
position table is resized (linear in time, bicubic in space, as the released code does), checked here against a
computation of both interpolations written out from their definitions."""
import numpy as np
import pytest
import torch

from ivtrain.convert import ConversionError
from ivtrain.export import load_encoder, write_export
from ivtrain.models.towers import load_vision_tower
from ivtrain.models.vit import InternVideo2, ViTConfig


def linear_matrix(n_in: int, n_out: int) -> np.ndarray:
    """(n_out, n_in) weights of 1-D linear interpolation with half-pixel centres (align_corners False)."""
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        x = min(max((o + 0.5) * n_in / n_out - 0.5, 0.0), n_in - 1)
        i = int(np.floor(x))
        j, t = min(i + 1, n_in - 1), x - i
        m[o, i] += 1 - t
        m[o, j] += t
    return m


def cubic_matrix(n_in: int, n_out: int, a: float = -0.75) -> np.ndarray:
    """(n_out, n_in) weights of 1-D cubic convolution (Keys, a = -0.75) with half-pixel centres and edge
    replication: the bicubic resampling PyTorch (and the released interpolate_pos_embed) uses, one axis at a time."""
    def w(x):
        x = abs(x)
        if x <= 1:
            return (a + 2) * x ** 3 - (a + 3) * x ** 2 + 1
        return a * x ** 3 - 5 * a * x ** 2 + 8 * a * x - 4 * a if x < 2 else 0.0

    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        x = (o + 0.5) * n_in / n_out - 0.5
        i = int(np.floor(x))
        t = x - i
        for k, weight in zip(range(i - 1, i + 3), (w(t + 1), w(t), w(1 - t), w(2 - t))):
            m[o, min(max(k, 0), n_in - 1)] += weight
    return m


def resized_by_hand(table: torch.Tensor, src: tuple, dst: tuple) -> torch.Tensor:
    """The table on the new grid, as matrix products: time by linear_matrix, then rows and columns by
    cubic_matrix; the CLS row unchanged."""
    (t, h, w), (nt, nh, nw) = src, dst
    x = table[0, 1:].double().numpy().reshape(t, h, w, -1)
    x = np.einsum("Tt,thwc->Thwc", linear_matrix(t, nt), x)
    x = np.einsum("Hh,thwc->tHwc", cubic_matrix(h, nh), x)
    x = np.einsum("Ww,thwc->thWc", cubic_matrix(w, nw), x)
    return torch.cat([table[0, :1].double(), torch.from_numpy(x.reshape(nt * nh * nw, -1))]).float()[None]


@pytest.fixture
def trained_run(tmp_path):
    """A 4-frame, 32 px tower whose position table is no longer sin-cos (as after training), exported as any
    objective's run is."""
    torch.manual_seed(0)
    tower = InternVideo2(ViTConfig(size="tiny", num_frames=4, img_size=32))
    with torch.no_grad():
        tower.pos_embed.add_(torch.randn_like(tower.pos_embed) * 0.3)
    write_export(tmp_path, "iv2_stage1", {"encoder": tower.state_dict()},
                 {**tower.config(), "mean": [0.5] * 3, "std": [0.25] * 3})
    return tmp_path, tower


def test_a_4_frame_32px_tower_loads_at_8_frames_64px_strictly(trained_run):
    run, tower = trained_run
    bigger, config = load_encoder(run, num_frames=8, img_size=64)
    assert bigger.grid == (8, 8, 8) and config["num_frames"] == 8
    torch.testing.assert_close(bigger.pos_embed.data, resized_by_hand(tower.pos_embed.data, (4, 4, 4), (8, 8, 8)),
                               atol=1e-5, rtol=1e-5)
    for name, value in tower.state_dict().items():      # everything else is the trained tower's, unchanged
        if name != "pos_embed":
            assert torch.equal(bigger.state_dict()[name], value), name
    with torch.no_grad():
        out = bigger(torch.randn(1, 3, 8, 64, 64))
    assert out.tokens.shape == (1, 1 + 8 * 8 * 8, 64)


def test_it_loads_as_an_image_tower(trained_run):
    run, tower = trained_run
    image_tower, _ = load_encoder(run, num_frames=1)
    assert image_tower.grid == (1, 4, 4)
    torch.testing.assert_close(image_tower.pos_embed.data,
                               resized_by_hand(tower.pos_embed.data, (4, 4, 4), (1, 4, 4)), atol=1e-6, rtol=1e-6)
    # one frame sits half-way through time: the mean of the middle two frames' rows
    middle = tower.pos_embed.data[0, 1:].reshape(4, 16, -1)[1:3].mean(0)
    torch.testing.assert_close(image_tower.pos_embed.data[0, 1:], middle, atol=1e-6, rtol=1e-6)
    with torch.no_grad():
        assert image_tower(torch.randn(2, 3, 1, 32, 32)).pooled.shape == (2, 64)


def test_a_separate_image_table_starts_from_sin_cos_and_serves_one_frame_inputs(trained_run):
    from ivtrain.models.pos_embed import sincos_3d

    run, tower = trained_run
    staged = InternVideo2(ViTConfig(size="tiny", num_frames=4, img_size=32, image_pos_embed=True))
    from safetensors.torch import load_file
    report = load_vision_tower(staged, load_file(str(run / "encoder.safetensors")))
    assert report.ok and report.adapted == ["img_pos_embed keeps its sin-cos start (the source has no image table)"]
    assert torch.equal(staged.pos_embed, tower.pos_embed)
    torch.testing.assert_close(staged.img_pos_embed.data, sincos_3d(64, 1, 4, 4)[None])
    # a one-frame input takes the image table, a clip the video table
    assert staged.position_table(1) is staged.img_pos_embed and staged.position_table(4) is staged.pos_embed
    with torch.no_grad():
        image = torch.randn(1, 3, 1, 32, 32)
        with_image_table = staged(image).tokens
        staged.img_pos_embed.add_(1.0)
        assert not torch.allclose(staged(image).tokens, with_image_table)


def test_anything_else_that_differs_is_refused_with_the_shape_report(trained_run):
    run, tower = trained_run
    wider = InternVideo2(ViTConfig(size="tiny", num_frames=4, img_size=32, embed_dim=96, num_heads=4, pool_heads=4))
    from safetensors.torch import load_file
    with pytest.raises(ConversionError, match="shape mismatch blocks.0.attn.qkv.weight"):
        load_vision_tower(wider, load_file(str(run / "encoder.safetensors")))
