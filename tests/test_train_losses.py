"""VAE training losses: MR-STFT against a numpy STFT, sum/difference, the discriminator, hinge and FM, VAELosses."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from conftest import rel_err

from etta_engine.train.common import check_resume_config
from etta_engine.train.losses import (
    MultiResolutionSTFTLoss,
    MultiScaleMelLoss,
    MultiScaleSTFTDiscriminator,
    SumAndDifferenceSTFTLoss,
    VAELosses,
    VAELossWeights,
    feature_matching_loss,
    hinge_discriminator_loss,
    hinge_generator_loss,
    mel_filterbank,
)

SMALL_D = dict(n_ffts=(256, 128, 64), hop_lengths=(64, 32, 16), win_lengths=(256, 128, 64))


def numpy_stft(x: np.ndarray, n_fft: int, hop: int, win: int, center: bool) -> np.ndarray:
    """Complex STFT of x (N, S) written out: (reflect-pad), frame, periodic Hann window centred in n_fft, rfft."""
    if center:
        x = np.pad(x, ((0, 0), (n_fft // 2, n_fft // 2)), mode="reflect")
    n = np.arange(win)
    hann = 0.5 - 0.5 * np.cos(2 * np.pi * n / win)  # periodic Hann
    window = np.zeros(n_fft)
    left = (n_fft - win) // 2
    window[left : left + win] = hann
    frames = 1 + (x.shape[1] - n_fft) // hop
    framed = np.stack([x[:, i * hop : i * hop + n_fft] for i in range(frames)], axis=1)  # (N, frames, n_fft)
    return np.fft.rfft(framed * window, axis=-1).transpose(0, 2, 1)  # (N, F, frames)


def numpy_resolution_loss(pred: np.ndarray, target: np.ndarray, n_fft: int, hop: int, win: int, eps: float) -> float:
    p = np.abs(numpy_stft(pred, n_fft, hop, win, center=True))
    t = np.abs(numpy_stft(target, n_fft, hop, win, center=True))
    sc = np.sqrt(((t - p) ** 2).sum()) / np.sqrt((t**2).sum())
    return sc + np.abs(np.log(t + eps) - np.log(p + eps)).mean()


# ------------------------------------------------------------------ MR-STFT


@pytest.mark.parametrize("win", [64, 48])
def test_single_resolution_matches_numpy_stft(win):
    pred, target = torch.randn(2, 3, 301), torch.randn(2, 3, 301)  # odd length, channels flattened
    loss = MultiResolutionSTFTLoss(fft_sizes=(64,), hop_sizes=(16,), win_lengths=(win,))
    expected = numpy_resolution_loss(
        pred.double().reshape(6, -1).numpy(), target.double().reshape(6, -1).numpy(), 64, 16, win, 1e-8
    )
    got = loss(pred, target)
    assert got.ndim == 0 and got.dtype == torch.float32
    assert abs(got.item() - expected) <= 1e-5 * expected


def test_multi_resolution_is_the_mean_over_resolutions():
    pred, target = torch.randn(1, 2, 500), torch.randn(1, 2, 500)
    sizes = ((64, 16, 64), (32, 8, 32), (16, 4, 12))
    loss = MultiResolutionSTFTLoss(*zip(*sizes, strict=True))
    p, t = pred.double().reshape(2, -1).numpy(), target.double().reshape(2, -1).numpy()
    expected = np.mean([numpy_resolution_loss(p, t, *s, 1e-8) for s in sizes])
    assert abs(loss(pred, target).item() - expected) <= 1e-5 * expected


def test_mrstft_zero_for_identical_positive_otherwise_and_gradient():
    loss = MultiResolutionSTFTLoss()  # the ETTA resolutions, 2048..32
    target = torch.randn(2, 2, 4096)
    assert loss(target, target.clone()).item() == 0.0
    pred = (target + 0.1 * torch.randn_like(target)).requires_grad_()
    value = loss(pred, target)
    assert torch.isfinite(value) and value.item() > 0
    value.backward()
    assert torch.isfinite(pred.grad).all() and pred.grad.abs().sum() > 0
    same = target.clone().requires_grad_()
    loss(same, target).backward()  # |.|, norm and abs at exactly zero difference: zero, not NaN
    assert torch.isfinite(same.grad).all()


def test_spectral_convergence_is_scale_invariant():
    loss = MultiResolutionSTFTLoss(fft_sizes=(256, 64), hop_sizes=(64, 16), win_lengths=(256, 64))
    pred, target = torch.randn(2, 2, 2000), torch.randn(2, 2, 2000)
    for (sc, log_mag), (sc_scaled, log_mag_scaled) in zip(
        loss.terms(pred, target), loss.terms(7.5 * pred, 7.5 * target), strict=True
    ):
        assert sc.item() > 0.1
        assert rel_err(sc_scaled, sc) < 1e-5
        assert rel_err(log_mag_scaled, log_mag) < 1e-3  # invariant up to eps inside the log


def test_mrstft_runs_in_fp32_for_bf16_inputs():
    loss = MultiResolutionSTFTLoss(fft_sizes=(128, 32), hop_sizes=(32, 8), win_lengths=(128, 32))
    pred, target = torch.randn(1, 2, 1000).bfloat16(), torch.randn(1, 2, 1000).bfloat16()
    got = loss(pred, target)
    assert got.dtype == torch.float32
    assert rel_err(got, loss(pred.float(), target.float())) < 1e-6


def test_mrstft_bad_arguments_are_named():
    with pytest.raises(ValueError, match="must have the same non-zero length"):
        MultiResolutionSTFTLoss(fft_sizes=(64, 32), hop_sizes=(16,), win_lengths=(64, 32))
    with pytest.raises(ValueError, match=r"resolution \(fft=64, hop=0, win=64\) must be positive"):
        MultiResolutionSTFTLoss(fft_sizes=(64,), hop_sizes=(0,), win_lengths=(64,))
    with pytest.raises(ValueError, match="window length 128 exceeds its fft size 64"):
        MultiResolutionSTFTLoss(fft_sizes=(64,), hop_sizes=(16,), win_lengths=(128,))
    loss = MultiResolutionSTFTLoss()
    with pytest.raises(ValueError, match=r"pred shape \(1, 2, 4096\) and target shape \(1, 2, 4095\)"):
        loss(torch.randn(1, 2, 4096), torch.randn(1, 2, 4095))
    with pytest.raises(ValueError, match="S=1000 is too short for fft size 2048"):
        loss(torch.randn(1, 2, 1000), torch.randn(1, 2, 1000))


# ------------------------------------------------------------------ sum and difference


def test_sum_and_difference_is_the_mean_of_two_mrstft_losses():
    loss = SumAndDifferenceSTFTLoss(fft_sizes=(128, 32), hop_sizes=(32, 8), win_lengths=(128, 32))
    pred, target = torch.randn(2, 2, 1500), torch.randn(2, 2, 1500)
    s = loss.mrstft(pred.sum(1, keepdim=True), target.sum(1, keepdim=True))
    d = loss.mrstft(pred[:, [0]] - pred[:, [1]], target[:, [0]] - target[:, [1]])
    assert rel_err(loss(pred, target), (s + d) / 2) < 1e-6


def test_mono_collapse_only_costs_in_the_difference():
    loss = SumAndDifferenceSTFTLoss()
    target = torch.randn(2, 2, 4096)
    mono = target.mean(1, keepdim=True).expand(-1, 2, -1)  # same sum L + R, no stereo image
    sum_loss = loss.mrstft(mono[:, :1] + mono[:, 1:], target[:, :1] + target[:, 1:])
    diff_loss = loss.mrstft(mono[:, :1] - mono[:, 1:], target[:, :1] - target[:, 1:])
    assert sum_loss.item() < 1e-6
    assert diff_loss.item() > 1.0
    assert rel_err(loss(mono, target), (sum_loss + diff_loss) / 2) < 1e-6


def test_swapping_left_and_right_is_invisible_to_magnitude_losses():
    # R - L = -(L - R) and |STFT(-d)| = |STFT(d)|: the recipe's loss cannot see a channel swap
    # (the discriminator, which sees real and imaginary parts, can).
    loss = SumAndDifferenceSTFTLoss()
    target = torch.randn(2, 2, 4096)
    assert loss(target.flip(1), target).item() < 1e-6
    assert loss(target * torch.tensor([1.0, 0.5])[:, None], target).item() > 0.1


def test_sum_and_difference_of_mono_is_the_plain_mrstft():
    """Mono models have no stereo image: their loss is the MR-STFT of the one channel; 3 channels are refused."""
    loss = SumAndDifferenceSTFTLoss()
    pred, target = torch.randn(1, 1, 4096), torch.randn(1, 1, 4096)
    assert torch.equal(loss(pred, target), loss.mrstft(pred, target))
    with pytest.raises(ValueError, match=r"need stereo \(B, 2, S\) or mono \(B, 1, S\), got \(1, 3, 4096\)"):
        loss(torch.randn(1, 3, 4096), torch.randn(1, 3, 4096))


# ------------------------------------------------------------------ discriminator


def conv_out(n: int, kernel: int, stride: int, padding: int, dilation: int = 1) -> int:
    return (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1


@pytest.mark.parametrize(("B", "S"), [(2, 8192), (3, 8191)])
def test_discriminator_output_structure(B, S):
    disc = MultiScaleSTFTDiscriminator(filters=8)
    out = disc(torch.randn(B, 2, S))
    logits, features = out  # a NamedTuple: unpacks, and has .logits / .features
    assert logits is out.logits and features is out.features
    assert len(logits) == len(features) == 5
    for n_fft, hop, lg, fm in zip((2048, 1024, 512, 256, 128), (512, 256, 128, 64, 32), logits, features, strict=True):
        frames = 1 + (S - n_fft) // hop  # uncentred frames
        freq = n_fft // 2 + 1
        for _ in range(3):  # three (3, 9) convolutions with frequency stride 2, padding 4
            freq = conv_out(freq, 9, 2, 4)
        assert lg.shape == (B, 1, frames, freq)
        assert len(fm) == 5  # first conv, three dilated convs, the (3, 3) conv
        assert all(f.shape[:3] == (B, 8, frames) for f in fm)
        assert fm[0].shape[3] == n_fft // 2 + 1 and fm[-1].shape[3] == freq


def test_discriminator_features_are_activated_conv_outputs_and_logits_are_not():
    disc = MultiScaleSTFTDiscriminator(filters=8, negative_slope=0.3, **SMALL_D)
    x = torch.randn(2, 2, 1000)
    logits, features = disc(x)
    scale = disc.discriminators[1]
    z = scale.spectrogram(x)
    for conv, f in zip(scale.convs, features[1], strict=True):
        z = conv(z)
        assert torch.equal(f, torch.where(z >= 0, z, 0.3 * z))  # LeakyReLU(0.3) after every conv ...
        z = f
    assert torch.equal(logits[1], scale.conv_post(features[1][-1]))  # ... but the logits conv
    assert (logits[1] < 0).any() and (logits[1] > 0).any()


def test_discriminator_spectrogram_matches_numpy_stft():
    disc = MultiScaleSTFTDiscriminator(in_channels=2, filters=4, n_ffts=(64,), hop_lengths=(16,), win_lengths=(48,))
    x = torch.randn(3, 2, 333)
    z = disc.discriminators[0].spectrogram(x)  # (B, 2C, frames, F)
    ref = numpy_stft(x.double().reshape(6, -1).numpy(), 64, 16, 48, center=False) / np.sqrt(64)  # (6, F, frames)
    ref = torch.from_numpy(ref).reshape(3, 2, 33, -1).transpose(2, 3)  # (B, C, frames, F)
    assert z.shape == (3, 4, 1 + (333 - 64) // 16, 33)
    assert rel_err(z, torch.cat([ref.real, ref.imag], dim=1)) < 1e-5


def test_discriminator_gradients_reach_every_parameter():
    disc = MultiScaleSTFTDiscriminator(filters=8)
    x = torch.randn(2, 2, 8192, requires_grad=True)
    logits, features = disc(x)
    (sum(lg.mean() for lg in logits) + sum(f.square().mean() for fm in features for f in fm)).backward()
    params = dict(disc.named_parameters())
    assert any("parametrizations.weight.original0" in n for n in params)  # weight-normalised
    for name, p in params.items():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert x.grad.abs().sum() > 0


def test_discriminator_widths_grow_with_filters_scale_up_to_max():
    disc = MultiScaleSTFTDiscriminator(filters=4, filters_scale=2, max_filters=16, **SMALL_D)
    _, features = disc(torch.randn(1, 2, 1024))
    assert [f.shape[1] for f in features[0]] == [4, 8, 16, 16, 16]


def test_discriminator_bad_input_is_named():
    disc = MultiScaleSTFTDiscriminator(filters=4, **SMALL_D)
    with pytest.raises(ValueError, match=r"takes \(B, 2, S\) audio, got shape \(1, 1, 1024\)"):
        disc(torch.randn(1, 1, 1024))
    with pytest.raises(ValueError, match="audio length 200 is shorter than the largest fft size 256"):
        disc(torch.randn(1, 2, 200))
    with pytest.raises(ValueError, match=r"kernel_size=\(3, 8\) must be two odd"):
        MultiScaleSTFTDiscriminator(kernel_size=(3, 8))


# ------------------------------------------------------------------ hinge and feature matching


def test_hinge_losses_by_hand():
    real = [torch.tensor([0.5, 2.0, -1.0]), torch.tensor([[3.0, 0.0]])]
    fake = [torch.tensor([-2.0, 0.0, 0.5]), torch.tensor([[-0.5, 1.0]])]
    # scale 0: relu(1 - real) = (0.5, 0, 2), relu(1 + fake) = (0, 1, 1.5); scale 1: (0, 1), (0.5, 2)
    expected_d = (2.5 / 3 + 2.5 / 3) + (1 / 2 + 2.5 / 2)
    assert hinge_discriminator_loss(real, fake).item() == pytest.approx(expected_d, rel=1e-6)
    assert hinge_generator_loss(fake).item() == pytest.approx(-(-1.5 / 3) - 0.5 / 2, rel=1e-6)
    with pytest.raises(ValueError, match=r"real_logits \(2 scales\) and fake_logits \(1 scales\)"):
        hinge_discriminator_loss(real, fake[:1])


def test_feature_matching_by_hand_and_real_branch_gets_no_gradient():
    real = [[torch.ones(2, 3), torch.zeros(4)], [torch.full((5,), 2.0)]]
    real = [[f.requires_grad_() for f in scale] for scale in real]
    fake = [[torch.zeros(2, 3, requires_grad=True), torch.full((4,), -3.0, requires_grad=True)]]
    fake.append([torch.full((5,), 2.5, requires_grad=True)])
    assert feature_matching_loss(real, real).item() == 0.0
    loss = feature_matching_loss(real, fake)
    assert loss.item() == pytest.approx((1.0 + 3.0) / 2 + 0.5, rel=1e-6)
    loss.backward()
    assert all(f.grad is None for scale in real for f in scale)
    assert torch.allclose(fake[0][0].grad, torch.full((2, 3), -1 / 2 / 6))  # d/dfake mean|r - f| / 2 layers
    assert torch.allclose(fake[1][0].grad, torch.full((5,), 1 / 5))


# ------------------------------------------------------------------ VAELosses


def small_losses(weights: VAELossWeights | None = None) -> VAELosses:
    return VAELosses(weights, discriminator_filters=8, **SMALL_D)


def test_generator_loss_parts_and_weighted_total():
    weights = VAELossWeights(mrstft=2.0, adversarial=0.3, feature_matching=1.5, kl=0.01)
    losses = small_losses(weights)
    target = torch.randn(2, 2, 4096)
    pred = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    kl = torch.tensor(12.0)
    total, parts = losses.generator_loss(pred, target, kl)
    assert set(parts) == {"mrstft", "adversarial", "feature_matching", "kl", "mel"}
    assert parts["mel"] == 0  # weight 0: not computed
    assert all(v.ndim == 0 and not v.requires_grad and v.dtype == torch.float32 for v in parts.values())
    fake_logits, fake_features = losses.discriminator(pred)
    _, real_features = losses.discriminator(target)
    expected = {
        "mrstft": losses.spectral(pred, target),
        "adversarial": sum(-lg.mean() for lg in fake_logits),
        "feature_matching": sum(
            sum((r - f).abs().mean() for r, f in zip(rs, fs, strict=True)) / len(rs)
            for rs, fs in zip(real_features, fake_features, strict=True)
        ),
        "kl": kl,
    }
    for name, value in expected.items():
        assert rel_err(parts[name], value) < 1e-6, name
    assert parts["mrstft"] > 0 and parts["feature_matching"] > 0
    weighted = 2.0 * parts["mrstft"] + 0.3 * parts["adversarial"] + 1.5 * parts["feature_matching"] + 0.01 * 12.0
    assert rel_err(total, weighted) < 1e-6
    total.backward()
    assert pred.grad.abs().sum() > 0


def test_warm_up_weights_skip_the_discriminator(monkeypatch):
    losses = small_losses(VAELossWeights(adversarial=0.0, feature_matching=0.0))

    def called(*args, **kwargs):
        raise AssertionError("the discriminator ran during the spectral + KL warm-up")

    monkeypatch.setattr(losses.discriminator, "forward", called)
    target = torch.randn(1, 2, 4096)
    pred = target + 0.1 * torch.randn_like(target)
    total, parts = losses.generator_loss(pred, target, torch.tensor(3.0))
    assert parts["adversarial"].item() == 0.0 and parts["feature_matching"].item() == 0.0
    assert rel_err(total, parts["mrstft"] + 1e-4 * 3.0) < 1e-6


def test_discriminator_loss_is_hinge_on_target_and_detached_pred():
    losses = small_losses()
    target = torch.randn(2, 2, 2048)
    pred = torch.randn(2, 2, 2048, requires_grad=True)
    loss = losses.discriminator_loss(pred, target)
    real_logits, _ = losses.discriminator(target)
    fake_logits, _ = losses.discriminator(pred)
    assert rel_err(loss, hinge_discriminator_loss(real_logits, fake_logits)) < 1e-6
    loss.backward()
    assert pred.grad is None
    assert all(p.grad is not None for p in losses.discriminator.parameters())


def test_weights_are_validated():
    assert VAELossWeights() == VAELossWeights(1.0, 0.1, 5.0, 1e-4)
    with pytest.raises(ValueError, match="loss weight kl=-1.0 must be a finite number >= 0"):
        VAELossWeights(kl=-1.0)
    with pytest.raises(ValueError, match=r"kl must have 0 dimensions, got shape \(2,\)"):
        small_losses().generator_loss(torch.randn(1, 2, 1024), torch.randn(1, 2, 1024), torch.ones(2))


def test_optimising_a_signal_with_generator_loss_reduces_the_loss():
    losses = small_losses()  # the full objective, discriminator (fixed, random) included
    g = torch.Generator().manual_seed(1)
    target = torch.randn(1, 2, 2048, generator=g)
    pred = torch.nn.Parameter(torch.randn(1, 2, 2048, generator=g))
    opt = torch.optim.Adam([pred], lr=0.1)
    history = []
    for _ in range(10):
        total, parts = losses.generator_loss(pred, target, torch.zeros(()))
        opt.zero_grad()
        total.backward()
        opt.step()
        history.append((total.item(), parts["mrstft"].item()))
    assert history[-1][0] < 0.9 * history[0][0]
    assert history[-1][1] < 0.9 * history[0][1]


def test_mono_targets_keep_the_difference_loss_bounded_and_pull_towards_mono():
    """Mono training clips have a silent difference channel: the loss must stay bounded there and its
    gradient must shrink the prediction's difference channel."""
    g = torch.Generator().manual_seed(0)
    mono = torch.randn(2, 1, 4096, generator=g).repeat(1, 2, 1)
    pred = (mono + 0.1 * torch.randn(2, 2, 4096, generator=g)).requires_grad_()
    loss_fn = SumAndDifferenceSTFTLoss(fft_sizes=(256, 64), hop_sizes=(64, 16), win_lengths=(256, 64))
    loss = loss_fn(pred, mono)
    assert torch.isfinite(loss) and loss.item() < 50
    loss.backward()
    diff = pred[:, 0] - pred[:, 1]
    stepped = pred.detach() - 1e-3 * pred.grad
    assert (stepped[:, 0] - stepped[:, 1]).norm() < diff.norm()


# ------------------------------------------------------------------ the multi-scale mel loss


def numpy_mel_filterbank(n_freqs: int, n_mels: int, sample_rate: int) -> np.ndarray:
    """HTK triangles written out: centres equally spaced in mel, each filter linear between its neighbours."""
    to_mel = lambda f: 2595 * np.log10(1 + f / 700)
    to_hz = lambda m: 700 * (10 ** (m / 2595) - 1)
    edges = to_hz(np.linspace(0, to_mel(sample_rate / 2), n_mels + 2))
    bins = np.linspace(0, sample_rate / 2, n_freqs)
    return np.stack([np.interp(bins, edges[m : m + 3], [0, 1, 0], left=0, right=0) for m in range(n_mels)])


def test_mel_filterbank_matches_numpy_triangles_and_sums_to_one_inside():
    fb = mel_filterbank(257, 40, 8000)
    ref = numpy_mel_filterbank(257, 40, 8000)
    assert fb.shape == (40, 257)
    assert np.abs(fb.numpy() - ref).max() < 1e-6
    centres = 700 * (10 ** (np.linspace(0, 2595 * np.log10(1 + 4000 / 700), 42)[1:-1] / 2595) - 1)
    bins = np.linspace(0, 4000, 257)
    inside = (bins >= centres[0]) & (bins <= centres[-1])
    assert np.allclose(fb.sum(0).numpy()[inside], 1.0, atol=1e-6)  # neighbours overlap into a partition of unity


def test_mel_loss_matches_a_numpy_reference():
    pred, target = torch.randn(2, 1, 700), torch.randn(2, 1, 700)
    loss = MultiScaleMelLoss(8000, win_lengths=(64, 128), n_mels=(10, 20), eps=1e-5)
    expected = []
    for w, m in ((64, 10), (128, 20)):
        fb = numpy_mel_filterbank(w // 2 + 1, m, 8000)
        mel = [
            fb @ np.abs(numpy_stft(x.double().reshape(2, -1).numpy(), w, w // 4, w, True)) ** 2 for x in (pred, target)
        ]
        expected.append(np.abs(np.log10(np.maximum(mel[0], 1e-5)) - np.log10(np.maximum(mel[1], 1e-5))).mean())
    assert abs(loss(pred, target).item() - np.mean(expected)) < 1e-5 * np.mean(expected)


def test_mel_loss_prefers_a_nearly_right_tone_to_silence_where_the_mrstft_does_not():
    """Why the mel term exists: under a fine STFT a tone 5 % off its frequency costs more than silence, so a
    small VAE learns to drop tones it cannot yet place exactly; the mel bands give it partial credit."""
    t = torch.arange(8192) / 8000
    tone = lambda f: (0.5 * torch.sin(2 * torch.pi * f * t))[None, None]
    target, near, silence = tone(1500.0), tone(1575.0), torch.zeros(1, 1, 8192)
    mel, mrstft = MultiScaleMelLoss(8000), MultiResolutionSTFTLoss(eps=1e-3)
    assert mel(near, target) < 0.75 * mel(silence, target)
    assert mrstft(near, target) > mrstft(silence, target)
    assert mel(target, target) == 0


def test_mel_weight_enters_the_total_and_needs_the_sample_rate():
    with pytest.raises(ValueError, match="sample_rate"):
        VAELosses(VAELossWeights(adversarial=0.0, feature_matching=0.0, mel=2.0))
    losses = VAELosses(
        VAELossWeights(mrstft=1.0, adversarial=0.0, feature_matching=0.0, kl=0.0, mel=2.0), sample_rate=8000
    )
    target = torch.randn(1, 1, 4096)
    pred = (target + 0.3 * torch.randn_like(target)).requires_grad_()
    total, parts = losses.generator_loss(pred, target, torch.tensor(0.0))
    assert rel_err(parts["mel"], MultiScaleMelLoss(8000)(pred, target)) < 1e-6 and parts["mel"] > 0
    assert rel_err(total, parts["mrstft"] + 2.0 * parts["mel"]) < 1e-6
    with pytest.raises(ValueError, match="win_lengths"):
        MultiScaleMelLoss(8000, win_lengths=(64,), n_mels=(10, 20))
    with pytest.raises(ValueError, match="too short"):
        MultiScaleMelLoss(8000)(torch.zeros(1, 1, 512), torch.zeros(1, 1, 512))


def test_resume_counts_a_setting_added_later_as_its_default():
    saved = {"lr": 1e-3, "max_steps": 10}
    check_resume_config(
        saved, {"lr": 1e-3, "max_steps": 20, "mel_weight": 0.0}, {"max_steps"}, "ck", {"mel_weight": 0.0}
    )
    with pytest.raises(Exception, match="mel_weight"):
        check_resume_config(saved, {"lr": 1e-3, "max_steps": 10, "mel_weight": 15.0}, set(), "ck", {"mel_weight": 0.0})
