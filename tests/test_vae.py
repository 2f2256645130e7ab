"""The Oobleck VAE: official layout, an independent decoder forward, lengths, bottleneck and bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from conftest import official_key_shapes, randomize_, rel_err

import etta_engine as E
from etta_engine.models.vae import SnakeBeta, WNConv1d, pad_to_multiple


def test_decoder_keys_and_shapes_equal_the_official_listing():
    with torch.device("meta"):
        vae = E.VAE(E.PRESETS["etta"].vae)
    ours = {"pretransform.model." + k: tuple(v.shape) for k, v in vae.state_dict().items() if k.startswith("decoder.")}
    listing = {k: v for k, v in official_key_shapes().items() if k.startswith("pretransform.model.decoder.")}
    assert ours == listing


def snake_fp64(x, alpha, beta):
    x = x.double()
    a, b = alpha.double().exp()[None, :, None], beta.double().exp()[None, :, None]
    return x + torch.sin(a * x) ** 2 / (b + 1e-9)


def test_snake_beta_formula():
    snake = SnakeBeta(6)
    with torch.no_grad():
        snake.alpha.normal_()
        snake.beta.normal_()
    x = torch.randn(2, 6, 50) * 3
    assert rel_err(snake(x), snake_fp64(x, snake.alpha, snake.beta)) < 1e-6


def test_weight_norm_is_g_times_unit_v_and_starts_at_v():
    conv = WNConv1d(5, 7, kernel_size=3, padding=1)
    assert torch.allclose(conv.weight(), conv.weight_v, atol=1e-6)  # g = ||v|| at init
    with torch.no_grad():
        conv.weight_g.mul_(torch.arange(1, 8, dtype=torch.float32)[:, None, None])
    w = conv.weight()
    norms = w.flatten(1).norm(dim=1)
    assert torch.allclose(norms, conv.weight_g.flatten(), rtol=1e-5)
    x = torch.randn(2, 5, 11)
    assert torch.allclose(conv(x), F.conv1d(x, w, conv.bias, padding=1), atol=1e-5)


def test_folded_weight_is_kept_for_inference_until_a_parameter_changes():
    """Without autograd the folded weight is reused (the same tensor), and recomputed after an in-place update, a
    ``load_state_dict`` or a cast; with autograd it is computed per call, so gradients reach g and v."""
    conv = WNConv1d(5, 7, kernel_size=3, padding=1)
    fresh = lambda: conv._fold().detach()
    with torch.no_grad():
        w = conv.weight()
        assert conv.weight() is w
        conv.weight_g.mul_(2.0)  # as an optimizer step
        assert conv.weight() is not w and torch.equal(conv.weight(), fresh())
        state = {k: torch.randn_like(p) for k, p in conv.state_dict().items()}
        conv.load_state_dict(state)
        assert torch.equal(conv.weight(), fresh())
        assert conv.double().weight().dtype == torch.float64
    conv.float()
    x = torch.randn(2, 5, 11)
    conv(x).square().sum().backward()  # autograd: not cached
    assert conv.weight_g.grad is not None and conv.weight_v.grad.abs().sum() > 0
    conv.requires_grad_(False)  # frozen weights: cached even with grad mode on
    w = conv.weight()
    assert conv.weight() is w


def decoder_fp64(sd: dict[str, torch.Tensor], cfg: E.VAEConfig, z: torch.Tensor) -> torch.Tensor:
    """The decoder written from the spec over official key names (legacy weight norm), fp64."""
    sd = {k: v.double() for k, v in sd.items()}

    def weight(name):
        v, g = sd[name + ".weight_v"], sd[name + ".weight_g"]
        return g * v / v.flatten(1).norm(dim=1)[:, None, None]

    def snake(x, name):
        return snake_fp64(x, sd[name + ".alpha"], sd[name + ".beta"]).double()

    def residual(x, name, d):
        w, bias = weight(name + ".layers.1"), sd[name + ".layers.1.bias"]
        y = F.conv1d(snake(x, name + ".layers.0"), w, bias, padding=3 * d, dilation=d)
        y = F.conv1d(snake(y, name + ".layers.2"), weight(name + ".layers.3"), sd[name + ".layers.3.bias"])
        return x + y

    p = "decoder.layers."
    x = F.conv1d(z.double(), weight(p + "0"), sd[p + "0.bias"], padding=3)
    for j, s in enumerate(reversed(cfg.strides), start=1):
        b = f"{p}{j}.layers."
        x = F.conv_transpose1d(snake(x, b + "0"), weight(b + "1"), sd[b + "1.bias"], stride=s, padding=math.ceil(s / 2))
        for u, d in zip((2, 3, 4), (1, 3, 9), strict=True):
            x = residual(x, f"{b}{u}", d)
    n = len(cfg.strides) + 1
    return F.conv1d(snake(x, f"{p}{n}"), weight(f"{p}{n + 1}"), padding=3)


def test_decoder_matches_independent_reference():
    cfg = E.PRESETS["tiny"].vae
    vae = randomize_(E.VAE(cfg), std=0.3)
    with torch.no_grad():  # weight_g of the right scale keeps activations O(1)
        for m in vae.modules():
            if hasattr(m, "weight_g"):
                m.weight_g.fill_(1.0)
    z = torch.randn(2, cfg.latent_dim, 3)
    expected = decoder_fp64(vae.state_dict(), cfg, z)
    audio = vae.decode(z)
    assert audio.shape == (2, 2, 3 * 2048)
    assert rel_err(audio, expected) < 1e-3  # fp32 rounding grows through 20 layers of random Snakes
    assert rel_err(vae.double().decode(z.double()), expected) < 1e-10


@pytest.mark.parametrize("frames", [1, 4])
def test_encode_decode_lengths(frames):
    cfg = E.PRESETS["tiny"].vae
    vae = E.VAE(cfg)
    audio = torch.randn(3, 2, frames * cfg.downsampling_ratio)
    mean, std = vae.encode(audio)
    assert mean.shape == std.shape == (3, cfg.latent_dim, frames)
    assert (std > 1e-4).all()  # softplus(scale) + 1e-4
    assert vae.decode(mean).shape == audio.shape


def test_bottleneck_sample_and_kl():
    mean, std = torch.zeros(4, 64, 300), torch.ones(4, 64, 300)
    assert E.VAE.kl(mean, std).item() == pytest.approx(0.0, abs=1e-6)
    m2 = torch.full((1, 3, 1), 2.0)
    s2 = torch.full((1, 3, 1), 0.5)
    # per channel: mean^2 + var - log var - 1 = 4 + 0.25 + log 4 - 1
    assert E.VAE.kl(m2, s2).item() == pytest.approx(3 * (3.25 + math.log(4)), rel=1e-6)
    z = E.VAE.sample(torch.full((2, 64, 4000), 3.0), torch.full((2, 64, 4000), 0.5), torch.Generator().manual_seed(0))
    assert z.mean().item() == pytest.approx(3.0, abs=0.01) and z.std().item() == pytest.approx(0.5, rel=0.02)


def test_bad_inputs_are_named():
    vae = E.VAE(E.PRESETS["tiny"].vae)
    with pytest.raises(ValueError, match=r"audio must have 2 channels"):
        vae.encode(torch.randn(1, 1, 2048))
    with pytest.raises(ValueError, match="audio length 1000 must be a positive multiple of 2048"):
        vae.encode(torch.randn(1, 2, 1000))
    with pytest.raises(ValueError, match="audio must have 3 dimensions"):
        vae.encode(torch.randn(2, 2048))
    with pytest.raises(TypeError, match="audio is torch.float64 but the VAE's parameters are torch.float32"):
        vae.encode(torch.randn(1, 2, 2048, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"latents must have shape \(B, 64, T\)"):
        vae.decode(torch.randn(1, 32, 3))
    assert pad_to_multiple(torch.randn(1, 2, 1000), 2048).shape == (1, 2, 2048)


@pytest.mark.parametrize(("frames", "chunk", "overlap"), [(50, 30, 12), (37, 36, 16), (20, 64, 32)])
def test_chunked_decoding_matches_whole_decoding(frames, chunk, overlap):
    vae = E.VAE(E.PRESETS["tiny"].vae).double()
    z = torch.randn(2, 64, frames, dtype=torch.float64)
    with torch.no_grad():
        whole = vae.decode(z)
        chunked = vae.decode(z, chunk_frames=chunk, overlap_frames=overlap)
    assert chunked.shape == whole.shape
    # the decoder sees about 12 latent frames to each side: with at least that overlap, windows agree to rounding
    assert rel_err(chunked, whole) < 1e-12


def test_chunked_decoding_rejects_a_window_without_a_centre():
    vae = E.VAE(E.PRESETS["tiny"].vae)
    with pytest.raises(ValueError, match="chunk_frames=16 must exceed 2 \\* overlap_frames=16"):
        vae.decode(torch.randn(1, 64, 40), chunk_frames=16, overlap_frames=8)


def test_decoding_on_static_buffers_equals_the_plain_decoder_and_sees_weight_updates():
    """decode(cuda_graph="eager") runs what a CUDA graph captures (one static function per window shape, fed
    through its buffers): the same audio, for new latents, and after an in-place weight update."""
    vae = E.VAE(E.PRESETS["tiny"].vae).eval()
    kw = dict(chunk_frames=30, overlap_frames=5)  # hop 20: windows [0, 25), [15, 45), [35, 50)
    z = torch.randn(1, 64, 50)
    with torch.no_grad():
        for latents in (z, 0.5 * z):
            assert torch.equal(vae.decode(latents, cuda_graph="eager", **kw), vae.decode(latents, **kw))
        assert sorted(k[0] for k in vae.graphs.graphs) == [(1, 64, 15), (1, 64, 25), (1, 64, 30)]
        vae.decoder.layers[0].weight_g.mul_(2.0)  # in place: same address, new version
        assert torch.equal(vae.decode(z, cuda_graph="eager", **kw), vae.decode(z, **kw))
        assert len(vae.graphs.graphs) == 4  # one more (LRU, 4 kept): not the stale buffers of the old weights
        assert torch.equal(vae.decode(z[..., :20], cuda_graph=True), vae.decode(z[..., :20]))  # CPU: plain
        from etta_engine.models.vae import GRAPH_MAX_FRAMES

        long = torch.randn(2, 64, GRAPH_MAX_FRAMES // 2 + 1)  # over the limit with its batch: no static buffers
        assert torch.equal(vae.decode(long, cuda_graph="eager"), vae.decode(long))
        assert tuple(long.shape) not in {key[0] for key in vae.graphs.graphs}
    with pytest.raises(ValueError, match=r"cuda_graph='always' is not one of"):
        vae.decode(z, cuda_graph="always")


@pytest.mark.gpu
def test_decoder_graph_replays_equal_the_plain_decoder_on_cuda():
    """A window shape's first call warms up, its second captures, every later one replays (no host sync)."""
    vae = E.VAE(E.PRESETS["tiny"].vae).cuda().eval()
    zs = [torch.randn(2, 64, 22, device="cuda") for _ in range(4)]
    with torch.no_grad():
        for k, z in enumerate(zs):
            if k == 3:
                torch.cuda.set_sync_debug_mode("error")
            try:
                got = vae.decode(z, cuda_graph=True)
            finally:
                torch.cuda.set_sync_debug_mode("default")
            want = vae.decode(z)
            assert rel_err(got, want) <= 1e-5, k  # cuDNN may pick another algorithm under capture
    (static,) = vae.graphs.graphs.values()
    assert static.graph is not None


@pytest.mark.gpu
def test_window_shapes_share_one_graph_pool_and_replay_in_any_order():
    """The decoder's graphs of three window shapes share the cache's memory pool; replayed in an order other than
    their capture's, each still equals the plain decoder (every replay's output is copied out of the pool)."""
    vae = E.VAE(E.PRESETS["tiny"].vae).cuda().eval()
    shapes = (15, 25, 30)
    with torch.no_grad():
        for _ in range(2):  # warm up, then capture each shape
            for frames in shapes:
                vae.decode(torch.randn(1, 64, frames, device="cuda"), cuda_graph=True)
        statics = list(vae.graphs.graphs.values())
        assert len(statics) == 3 and all(s.graph is not None for s in statics)
        assert len({s.graph.pool() for s in statics}) == 1
        for frames in (30, 15, 25, 15, 30):
            z = torch.randn(1, 64, frames, device="cuda")
            assert rel_err(vae.decode(z, cuda_graph=True), vae.decode(z)) <= 1e-5, frames
