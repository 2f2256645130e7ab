"""The training data pipeline: manifests, audio reading, crops, mixing, the dataset and the resumable sampler."""

from __future__ import annotations

import json
import logging
import math
import pickle

import numpy as np
import pytest
import soundfile as sf
import torch

from etta_engine.data import (
    AudioReadError,
    AudioTextDataset,
    ManifestEntry,
    ResumableSampler,
    crop_or_pad,
    item_seed,
    load_audio,
    mix,
    read_manifest,
)

SR = 44100


def write_audio(path, data: np.ndarray, sample_rate: int, subtype: str = "FLOAT") -> str:
    """Write (channels, samples) ``data``; FLOAT WAV keeps float32 samples bit-exact."""
    sf.write(path, np.ascontiguousarray(data.T), sample_rate, subtype=subtype)
    return str(path)


def noise(channels: int, samples: int, seed: int, scale: float = 0.3) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((channels, samples)) * scale).astype(np.float32)


def power(x: torch.Tensor) -> float:
    return float(x.double().square().mean())


# ---------------------------------------------------------------------------------------------- manifest


def test_read_manifest_resolves_paths_and_reads_optional_fields(tmp_path):
    sub = tmp_path / "sets"
    sub.mkdir()
    elsewhere = tmp_path / "elsewhere.wav"
    lines = [
        json.dumps({"path": "clips/a.wav", "caption": "a dog barks"}),
        "",
        "   ",
        json.dumps({"path": str(elsewhere), "caption": "", "offset": 1.5, "duration": 2}),
        json.dumps({"path": "../b.flac", "caption": "rain", "duration": None}),
    ]
    (sub / "m.jsonl").write_text("\n".join(lines) + "\n")
    entries = read_manifest(sub / "m.jsonl")
    assert entries == [
        ManifestEntry(str(sub / "clips" / "a.wav"), "a dog barks", 0.0, None),
        ManifestEntry(str(elsewhere), "", 1.5, 2.0),
        ManifestEntry(str(tmp_path / "b.flac"), "rain", 0.0, None),
    ]
    assert isinstance(entries[1].duration, float)


@pytest.mark.parametrize(
    ("line", "pattern"),
    [
        ("{not json", r"m.jsonl:3: invalid JSON"),
        ('["a.wav", "x"]', r"m.jsonl:3: expected a JSON object, got list"),
        ('{"path": "a.wav"}', r'm.jsonl:3: missing required key "caption"'),
        ('{"caption": "x"}', r'm.jsonl:3: missing required key "path"'),
        ('{"path": "a.wav", "caption": 7}', r'm.jsonl:3: "caption" must be a string, got int'),
        ('{"path": "", "caption": "x"}', r'm.jsonl:3: "path" must be a non-empty string'),
        ('{"path": "a.wav", "caption": "x", "text": "y"}', r"m.jsonl:3: unknown key\(s\) \['text'\]; allowed: \["),
        ('{"path": "a.wav", "caption": "x", "offset": -1}', r'm.jsonl:3: "offset"=-1 must be a finite number >= 0'),
        ('{"path": "a.wav", "caption": "x", "duration": -2.5}', r'm.jsonl:3: "duration"=-2.5 must be .* > 0'),
        ('{"path": "a.wav", "caption": "x", "duration": 0}', r'm.jsonl:3: "duration"=0 must be .* > 0'),
        ('{"path": "a.wav", "caption": "x", "offset": "1"}', r"m.jsonl:3: \"offset\" must be a number >= 0 .*'1'"),
        ('{"path": "a.wav", "caption": "x", "offset": true}', r'm.jsonl:3: "offset" must be a number'),
    ],
)
def test_read_manifest_errors_name_file_and_line(tmp_path, line, pattern):
    good = json.dumps({"path": "ok.wav", "caption": "fine"})
    (tmp_path / "m.jsonl").write_text(f"{good}\n\n{line}\n{good}\n")
    with pytest.raises(ValueError, match=pattern):
        read_manifest(tmp_path / "m.jsonl")


def test_read_manifest_refuses_an_empty_manifest(tmp_path):
    (tmp_path / "empty.jsonl").write_text("\n  \n")
    with pytest.raises(ValueError, match=r"empty.jsonl: the manifest has no entries"):
        read_manifest(tmp_path / "empty.jsonl")


# ---------------------------------------------------------------------------------------------- load_audio


def test_load_audio_reads_exactly_the_requested_region(tmp_path):
    data = noise(2, SR, seed=1)  # 1 s
    path = write_audio(tmp_path / "x.wav", data, SR)
    region = load_audio(path, SR, offset=0.5, duration=0.25)
    assert region.dtype == torch.float32 and region.shape == (2, SR // 4)
    assert torch.equal(region, torch.from_numpy(data[:, SR // 2 : SR // 2 + SR // 4]))
    assert torch.equal(load_audio(path, SR), torch.from_numpy(data))
    assert torch.equal(load_audio(path, SR, offset=0.75, duration=10.0), torch.from_numpy(data[:, 3 * SR // 4 :]))
    with pytest.raises(AudioReadError, match=r"offset=1.5 s is at or past the end \(1 s\)"):
        load_audio(path, SR, offset=1.5)


def test_load_audio_reads_flac_regions(tmp_path):
    path = write_audio(tmp_path / "x.flac", noise(2, 30000, seed=2), SR, subtype="PCM_16")
    full, _ = sf.read(path, dtype="float32", always_2d=True)  # the 16-bit values, as floats
    region = load_audio(path, SR, offset=0.1, duration=0.2)
    start, n = round(0.1 * SR), round(0.2 * SR)
    assert torch.equal(region, torch.from_numpy(full[start : start + n].T.copy()))


def test_load_audio_channels(tmp_path):
    mono = noise(1, 5000, seed=3)
    stereo = noise(2, 5000, seed=4)
    x = load_audio(write_audio(tmp_path / "mono.wav", mono, SR), SR)
    assert x.shape == (2, 5000) and torch.equal(x[0], x[1]) and torch.equal(x[0], torch.from_numpy(mono[0]))
    down = load_audio(write_audio(tmp_path / "stereo.wav", stereo, SR), SR, channels=1)
    assert down.shape == (1, 5000)
    torch.testing.assert_close(down[0], torch.from_numpy(stereo.mean(axis=0)))
    with pytest.raises(AudioReadError, match=r"three.wav: has 3 channels; allowed: 1 or 2"):
        load_audio(write_audio(tmp_path / "three.wav", noise(3, 5000, seed=5), SR), SR)
    with pytest.raises(ValueError, match=r"channels=3 is not allowed; choices: 1, 2"):
        load_audio(tmp_path / "stereo.wav", SR, channels=3)


def test_load_audio_resamples_a_sine(tmp_path):
    rate_in, f0 = 22050, 440.0
    t_in = np.arange(rate_in) / rate_in  # 1 s
    path = write_audio(tmp_path / "sine.wav", (0.5 * np.sin(2 * np.pi * f0 * t_in))[None].astype(np.float32), rate_in)
    x = load_audio(path, SR)
    assert x.shape == (2, SR) and torch.equal(x[0], x[1])
    expected = 0.5 * np.sin(2 * np.pi * f0 * np.arange(SR) / SR)
    edge = 2000  # the resampler's filter sees the clip's ends as a step
    err = np.abs(x[0].numpy()[edge:-edge] - expected[edge:-edge]).max()
    assert err < 1e-3
    half = load_audio(path, SR, offset=0.2, duration=0.5)  # 11025 samples at 22050 Hz -> 22050 at 44100 Hz
    assert half.shape == (2, SR // 2)
    mid = slice(edge, SR // 2 - edge)
    assert np.abs(half[0].numpy()[mid] - expected[round(0.2 * SR) :][mid]).max() < 1e-3


def test_load_audio_errors_name_the_file(tmp_path):
    missing = tmp_path / "nope.wav"
    with pytest.raises(AudioReadError, match=r"nope.wav: no such file") as info:
        load_audio(missing, SR)
    assert isinstance(info.value, OSError) and info.value.path == str(missing)
    junk = tmp_path / "junk.wav"
    junk.write_bytes(np.random.default_rng(0).bytes(4000))
    with pytest.raises(AudioReadError, match=r"junk.wav: cannot decode"):
        load_audio(junk, SR)
    err = pickle.loads(pickle.dumps(AudioReadError(junk, "cannot decode: x")))  # as DataLoader workers send it
    assert (err.path, err.reason, str(err)) == (str(junk), "cannot decode: x", f"{junk}: cannot decode: x")
    with pytest.raises(ValueError, match=r"sample_rate=0 must be a positive integer"):
        load_audio(junk, 0)
    with pytest.raises(ValueError, match=r"duration=0.0 must be a finite number > 0"):
        load_audio(junk, SR, duration=0.0)


# ---------------------------------------------------------------------------------------------- crop_or_pad


def ramp(samples: int) -> torch.Tensor:
    """(2, samples): channel 0 is the sample index (exact in fp32), so a window's first value is its offset."""
    t = torch.arange(samples, dtype=torch.float32)
    return torch.stack([t, -t])


def test_crop_of_a_long_clip_is_a_window_of_it():
    S, length = 5 * SR + 7, SR
    audio = ramp(S)
    starts = set()
    for seed in range(12):
        r = crop_or_pad(audio, length, torch.Generator().manual_seed(seed), sample_rate=SR)
        offset = int(r.audio[0, 0])
        assert 0 <= offset <= S - length
        assert torch.equal(r.audio, audio[:, offset : offset + length])
        assert r.seconds_start == math.floor(offset / SR) and r.seconds_total == 6.0 and r.valid_samples == length
        again = crop_or_pad(audio, length, torch.Generator().manual_seed(seed), sample_rate=SR)
        assert torch.equal(again.audio, r.audio)
        starts.add(r.seconds_start)
    assert len(starts) >= 3  # offsets spread over [0, 4 s]
    fixed = crop_or_pad(audio, length, torch.Generator().manual_seed(3), random_crop=False, sample_rate=SR)
    assert torch.equal(fixed.audio, audio[:, :length]) and fixed.seconds_start == 0.0


def test_short_clip_is_zero_padded_without_drawing():
    audio = ramp(1000) + 1.0
    g = torch.Generator().manual_seed(0)
    state = g.get_state()
    r = crop_or_pad(audio, 2500, g, sample_rate=SR)
    assert r.audio.shape == (2, 2500) and torch.equal(r.audio[:, :1000], audio)
    assert not r.audio[:, 1000:].any()
    assert (r.seconds_start, r.seconds_total, r.valid_samples) == (0.0, 1.0, 1000)
    exact = crop_or_pad(audio, 1000, g, sample_rate=SR)
    assert torch.equal(exact.audio, audio) and exact.valid_samples == 1000
    assert torch.equal(g.get_state(), state)
    with pytest.raises(ValueError, match=r"length=0 must be an integer >= 1"):
        crop_or_pad(audio, 0, g)


# ---------------------------------------------------------------------------------------------- mix


@pytest.mark.parametrize("snr_db", [-5.0, -2.5, 0.0, 1.7, 5.0])
@pytest.mark.parametrize("offset", [0, 137, 3999])
def test_mix_hits_the_snr_and_delays_b(snr_db, offset):
    a = torch.from_numpy(noise(2, 4000, seed=10, scale=0.2))
    b = torch.from_numpy(noise(2, 4000, seed=11, scale=0.9))
    mixed = mix(a, b, snr_db, offset)
    assert mixed.dtype == torch.float32 and mixed.shape == a.shape
    added = mixed.double() - a.double()
    assert abs(10 * math.log10(power(a) / power(added)) - snr_db) < 1e-6
    assert not added[:, :offset].any()
    shifted = b[:, : 4000 - offset].double()
    corr = (added[:, offset:] * shifted).sum() / (added[:, offset:].norm() * shifted.norm())
    assert corr > 1 - 1e-9  # the added signal is b delayed by `offset`, scaled


def test_mix_silent_inputs():
    a = torch.from_numpy(noise(2, 100, seed=12))
    b = torch.zeros(2, 100)
    assert torch.equal(mix(a, b, 0.0, 5), a)
    b[:, 90:] = 1.0  # only in b's last 10 samples, which a delay of 10 pushes out
    assert torch.equal(mix(a, b, 0.0, 10), a)
    silent = torch.zeros(2, 100)
    out = mix(silent, b, 3.0, 4)
    assert torch.equal(out[:, 94:], torch.ones(2, 6)) and not out[:, :94].any()
    with pytest.raises(ValueError, match=r"offset=100 is outside \[0, 99\]"):
        mix(a, b, 0.0, 100)
    with pytest.raises(ValueError, match=r"same shape, got \(2, 100\) and \(2, 99\)"):
        mix(a, b[:, :99], 0.0, 0)


# ---------------------------------------------------------------------------------------------- dataset


@pytest.fixture
def entries(tmp_path) -> list[ManifestEntry]:
    t = np.arange(int(2.5 * 22050)) / 22050
    files = [
        write_audio(tmp_path / "long.wav", noise(2, 3 * SR, seed=20), SR),  # 3 s
        write_audio(tmp_path / "sine.wav", (0.4 * np.sin(2 * np.pi * 330 * t))[None].astype(np.float32), 22050),
        write_audio(tmp_path / "short.flac", noise(2, SR // 2, seed=21), SR, subtype="PCM_16"),  # 0.5 s
        write_audio(tmp_path / "mid.wav", noise(2, int(2.2 * SR), seed=22, scale=0.1), SR),
    ]
    return [ManifestEntry(f, f"cap{k}") for k, f in enumerate(files)]


def assert_same_item(x: dict, y: dict) -> None:
    assert x.keys() == y.keys() and torch.equal(x["audio"], y["audio"])
    assert all(x[k] == y[k] for k in ("caption", "seconds_start", "seconds_total", "index"))


def test_item_depends_only_on_seed_epoch_and_index(entries):
    kw = dict(sample_rate=SR, seconds=1.0, mix_probability=0.5, seed=3)
    first = AudioTextDataset(entries, **kw)
    items = [first[i] for i in range(4)]
    second = AudioTextDataset(entries, **kw)
    for i in (3, 1, 2, 2, 0):  # another order, with a repeat
        assert_same_item(second[i], items[i])
    for i, item in enumerate(items):
        assert item["audio"].shape == (2, SR) and item["audio"].dtype == torch.float32
        assert item["index"] == i and item["caption"].startswith(f"cap{i}")
        assert item["seconds_total"] == [3.0, 3.0, 1.0, 3.0][i]
    assert item_seed(3, 0, 1) != item_seed(3, 1, 0) and item_seed(0, 0, 10_007) != item_seed(0, 1, 0)


def test_item_is_the_same_in_dataloader_workers(entries):
    ds = AudioTextDataset(entries, SR, 0.5, mix_probability=0.5, seed=1)
    ds.set_epoch(2)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, num_workers=2, sampler=ResumableSampler(4, seed=1))
    batches = list(loader)
    order = list(ResumableSampler(4, seed=1))
    got = torch.cat([b["audio"] for b in batches])
    assert torch.equal(got, torch.stack([ds[i]["audio"] for i in order]))
    assert [c for b in batches for c in b["caption"]] == [ds[i]["caption"] for i in order]


def test_epoch_changes_the_crop(entries):
    ds = AudioTextDataset(entries, SR, 1.0, seed=0)
    crops, starts = [], set()
    for epoch in range(8):
        ds.set_epoch(epoch)
        item = ds[0]
        crops.append(item["audio"])
        starts.add(item["seconds_start"])
    assert not torch.equal(crops[0], crops[1])
    assert starts <= {0.0, 1.0, 2.0} and len(starts) >= 2
    fixed = AudioTextDataset(entries, SR, 1.0, random_crop=False)
    source = torch.from_numpy(sf.read(entries[0].path, dtype="float32", always_2d=True)[0].T.copy())
    assert torch.equal(fixed[0]["audio"], source[:, :SR]) and fixed[0]["seconds_start"] == 0.0


def test_short_clip_is_padded_and_counted(entries):
    ds = AudioTextDataset(entries, SR, 1.0)
    item = ds[2]
    assert item["audio"][:, : SR // 2].abs().sum() > 0 and not item["audio"][:, SR // 2 :].any()
    assert ds.padded_count == 1
    ds[0]
    assert ds.padded_count == 1


def test_mixing(entries):
    plain = AudioTextDataset(entries, SR, 1.0, seed=5)
    mixed = AudioTextDataset(entries, SR, 1.0, seed=5, mix_probability=1.0, caption_joiner=" + ")
    for epoch in range(3):
        plain.set_epoch(epoch)
        mixed.set_epoch(epoch)
        for i in range(4):
            p, m = plain[i], mixed[i]
            assert p["caption"] == f"cap{i}"
            first, second = m["caption"].split(" + ")
            assert first == f"cap{i}" and second in {f"cap{j}" for j in range(4) if j != i}
            assert (m["seconds_start"], m["seconds_total"]) == (p["seconds_start"], p["seconds_total"])
            added = m["audio"] - p["audio"]  # the same crop of clip i in both: mixing draws do not move it
            snr = 10 * math.log10(power(p["audio"]) / power(added))
            assert -5.0 - 1e-4 <= snr <= 5.0 + 1e-4


def test_skip_policy_replaces_a_missing_file(entries, caplog):
    entries[1] = ManifestEntry(entries[1].path + ".missing", "gone")
    entries[3] = ManifestEntry(entries[3].path + ".missing", "gone too")
    ds = AudioTextDataset(entries, SR, 1.0)
    with caplog.at_level(logging.WARNING, logger="etta_engine.data"):
        item = ds[1]
        assert (item["index"], item["caption"]) == (2, "cap2")
        assert_same_item(ds[1], item)
        wrapped = ds[3]
        assert (wrapped["index"], wrapped["caption"]) == (0, "cap0")
    assert ds.skipped == {1, 3}
    warnings = [r.getMessage() for r in caplog.records]
    assert len(warnings) == 2 and "entry 1" in warnings[0] and "sine.wav.missing" in warnings[0]
    for k in (0, 2):
        entries[k] = ManifestEntry(entries[k].path + ".missing", "gone")
    with pytest.raises(RuntimeError, match=r"none of the 4 manifest entries can be read"):
        AudioTextDataset(entries, SR, 1.0)[0]


def test_raise_policy_names_the_file_and_entry(entries):
    entries[2] = ManifestEntry(entries[2].path + ".missing", "gone")
    ds = AudioTextDataset(entries, SR, 1.0, on_error="raise")
    with pytest.raises(AudioReadError, match=r"short.flac.missing: no such file \(manifest entry 2\)"):
        ds[2]
    assert ds.skipped == set()


@pytest.mark.parametrize(
    ("kwargs", "pattern"),
    [
        (dict(seconds=0.0), r"seconds=0.0 must be a finite number > 0"),
        (dict(mix_probability=1.5), r"mix_probability=1.5 is outside \[0, 1\]"),
        (dict(snr_range=(5.0, -5.0)), r"snr_range=\(5.0, -5.0\) must be .* lo <= hi"),
        (dict(on_error="ignore"), r"on_error='ignore' is not allowed; choices: \['skip', 'raise'\]"),
        (dict(sample_rate=0), r"sample_rate=0 must be a positive integer"),
    ],
)
def test_dataset_refuses_bad_arguments(entries, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        AudioTextDataset(entries, **{"sample_rate": SR, "seconds": 1.0, **kwargs})


def test_dataset_mixing_needs_two_entries(entries):
    with pytest.raises(ValueError, match=r"mix_probability=0.5 needs at least 2 entries, got 1"):
        AudioTextDataset(entries[:1], SR, 1.0, mix_probability=0.5)
    with pytest.raises(IndexError, match=r"index=4 is outside \[0, 3\]"):
        AudioTextDataset(entries, SR, 1.0)[4]


# ---------------------------------------------------------------------------------------------- sampler


def permutation(n: int, seed: int) -> list[int]:
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


@pytest.mark.parametrize(("n", "world_size"), [(10, 3), (12, 4), (7, 1)])
def test_ranks_split_one_epoch(n, world_size):
    samplers = [ResumableSampler(n, seed=4, rank=r, world_size=world_size) for r in range(world_size)]
    for s in samplers:
        s.set_epoch(2)
    shares = [list(s) for s in samplers]
    kept = n - n % world_size
    assert all(len(share) == len(s) == kept // world_size for share, s in zip(shares, samplers, strict=True))
    interleaved = [share[k] for k in range(kept // world_size) for share in shares]
    assert interleaved == permutation(n, 4 + 2)[:kept]  # no overlap, nothing but the kept items


def test_no_drop_last_covers_everything():
    shares = [list(ResumableSampler(10, rank=r, world_size=4, drop_last=False)) for r in range(4)]
    assert all(len(s) == 3 for s in shares)
    order = permutation(10, 0)
    assert [s[k] for k in range(3) for s in shares] == order + order[:2]


def test_resume_mid_epoch():
    n, world_size, steps = 23, 2, 4
    full = {r: list(ResumableSampler(n, seed=9, rank=r, world_size=world_size)) for r in range(world_size)}
    for r in range(world_size):
        interrupted = ResumableSampler(n, seed=9, rank=r, world_size=world_size)
        interrupted.set_epoch(1)
        it = iter(interrupted)
        consumed = [next(it) for _ in range(steps)]
        interrupted.set_position(steps * world_size)  # what the trainer counted over all ranks
        state = interrupted.state_dict()
        assert state == {"epoch": 1, "position": steps * world_size}

        resumed = ResumableSampler(n, seed=9, rank=r, world_size=world_size)
        resumed.load_state_dict(state)
        resumed.set_epoch(1)  # the epoch loop's call keeps the loaded position
        rest = list(resumed)
        assert len(resumed) == len(rest) == n // world_size - steps
        whole = ResumableSampler(n, seed=9, rank=r, world_size=world_size)
        whole.set_epoch(1)
        assert consumed + rest == list(whole)
        resumed.set_epoch(2)  # a new epoch starts at its beginning
        assert len(resumed) == n // world_size and resumed.state_dict() == {"epoch": 2, "position": 0}
        assert list(resumed) != list(whole) != full[r]


def test_sampler_orders():
    s = ResumableSampler(50, seed=1)
    orders = []
    for epoch in range(3):
        s.set_epoch(epoch)
        orders.append(list(s))
        assert sorted(orders[-1]) == list(range(50)) and orders[-1] == permutation(50, 1 + epoch)
    assert orders[0] != orders[1] != orders[2]
    assert list(ResumableSampler(5, shuffle=False)) == [0, 1, 2, 3, 4]
    assert list(ResumableSampler(6, shuffle=False, rank=1, world_size=2)) == [1, 3, 5]


def test_sampler_refuses_bad_state():
    s = ResumableSampler(10, world_size=2, rank=1)
    with pytest.raises(ValueError, match=r"position=11 is outside \[0, 10\]"):
        s.set_position(11)
    with pytest.raises(ValueError, match=r"keys \['epoch', 'position'\], got \['epoch'\]"):
        s.load_state_dict({"epoch": 1})
    with pytest.raises(ValueError, match=r"rank=2 is outside \[0, 1\]"):
        ResumableSampler(10, rank=2, world_size=2)
    with pytest.raises(ValueError, match=r"dataset_len=3 < world_size=4"):
        ResumableSampler(3, world_size=4)
