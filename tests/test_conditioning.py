"""Number conditioners, the assembly of the DiT's conditioning, and the T5 text encoder."""

from __future__ import annotations

import copy
import math

import pytest
import torch

import etta_engine as E
from etta_engine.models.conditioning import NumberConditioner


def test_number_conditioner_formula():
    nc = NumberConditioner(dim=8, fourier_dim=16, max_value=512.0)
    values = torch.tensor([0.0, 10.0, 512.0])
    x = values[:, None] / 512.0
    f = 2 * math.pi * x * nc.fourier_weight[None, :]
    features = torch.cat((x, f.sin(), f.cos()), dim=-1)  # [x, sin, cos]: 17 values
    assert features.shape == (3, 17)
    expected = features @ nc.proj.weight.T + nc.proj.bias
    assert torch.allclose(nc(values), expected, atol=1e-6)


def test_conditioning_layout(tiny_cfg):
    cond = E.Conditioner(tiny_cfg)
    B, L, D = 2, 5, tiny_cfg.text.dim
    text = torch.randn(B, L, D)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    out = cond(text, mask, {"seconds_start": [0.0, 3.0], "seconds_total": 10.0})
    start = cond.numbers["seconds_start"](torch.tensor([0.0, 3.0]))
    total = cond.numbers["seconds_total"](torch.tensor([10.0, 10.0]))
    # memory: text tokens, then the seconds_start token, then the seconds_total token
    assert out.context.shape == (B, L + 2, D)
    assert torch.equal(out.context[:, :L], text)
    assert torch.allclose(out.context[:, L], start) and torch.allclose(out.context[:, L + 1], total)
    assert torch.equal(out.context_mask, torch.cat((mask, torch.ones(B, 2, dtype=torch.bool)), dim=1))
    # global conditioning: concat(seconds_start, seconds_total)
    assert torch.allclose(out.global_cond, torch.cat((start, total), dim=-1))
    assert out.global_cond.shape == (B, tiny_cfg.dit.global_cond_dim)


@pytest.mark.parametrize(
    ("numbers", "pattern"),
    [
        ({"seconds_start": 0.0, "seconds_total": 700.0}, r"seconds_total=700 is outside \[0, 512\]"),
        ({"seconds_start": -1.0, "seconds_total": 10.0}, r"seconds_start=-1 is outside \[0, 512\]"),
        ({"seconds_start": 0.0, "seconds_total": float("nan")}, r"seconds_total=nan is outside \[0, 512\]"),
        ({"seconds_start": [0.0, 1.0, 2.0], "seconds_total": 10.0}, "seconds_start must be a number or have 2 values"),
        ({"seconds_total": 10.0}, "numbers must have exactly the keys"),
    ],
)
def test_bad_numbers_are_named(tiny_cfg, numbers, pattern):
    cond = E.Conditioner(tiny_cfg)
    text, mask = torch.randn(2, 4, tiny_cfg.text.dim), torch.ones(2, 4, dtype=torch.bool)
    with pytest.raises(ValueError, match=pattern):
        cond(text, mask, numbers)


# ------------------------------------------------------------------ the T5 text encoder


def test_text_encoder_loads_from_a_local_directory(t5_dir):
    import transformers

    cfg = E.TextConfig(pretrained="not/used", dim=48, max_length=48)
    enc = E.T5TextEncoder.from_pretrained(cfg, t5_dir)
    prompts = ["a dog barks", "rain on a tin roof, far away thunder"]
    emb, mask = enc(prompts)
    assert emb.shape == (2, 48, 48) and emb.dtype == torch.float32
    assert mask.dtype == torch.bool and mask.shape == (2, 48)
    # padding to max_length with the mask; ByT5 ids: one per byte plus </s>
    assert mask.sum(1).tolist() == [len(p.encode()) + 1 for p in prompts]
    assert torch.count_nonzero(emb[~mask]) == 0  # padded positions are zeroed
    # the same numbers as transformers' own model run directly
    model = transformers.T5EncoderModel.from_pretrained(t5_dir).eval()
    tok = transformers.ByT5Tokenizer()
    batch = tok(prompts, padding="max_length", max_length=48, return_tensors="pt")
    with torch.no_grad():
        direct = model(**batch).last_hidden_state * batch["attention_mask"][..., None]
    assert torch.allclose(emb, direct, atol=1e-5)


def test_prompt_over_the_token_limit(t5_dir):
    enc = E.T5TextEncoder.from_pretrained(E.TextConfig(dim=48, max_length=8), t5_dir)
    with pytest.raises(ValueError, match="prompt 1 is 17 tokens long, over the text encoder's limit of 8 tokens"):
        enc(["short", "sixteen bytes!!!"])
    _, mask = enc(["short", "sixteen bytes!!!"], truncate=True)
    assert mask.sum(1).tolist() == [6, 8]


def test_text_encoder_errors(t5_dir, tmp_path):
    with pytest.raises(ValueError, match="d_model=48 but the model config expects text.dim=768"):
        E.T5TextEncoder.from_pretrained(E.TextConfig(), t5_dir)
    with pytest.raises(FileNotFoundError, match="without downloading"):
        E.T5TextEncoder.from_pretrained(E.TextConfig(), tmp_path / "missing")
    enc = E.T5TextEncoder.from_pretrained(E.TextConfig(dim=48, max_length=8), t5_dir)
    with pytest.raises(ValueError, match="prompts is empty"):
        enc([])
    with pytest.raises(TypeError, match="prompts must be a list of strings"):
        enc("a bare string")
    with pytest.raises(TypeError, match="prompt 1 must be a string"):
        enc(["ok", 3])


def test_model_condition_end_to_end(tiny_model, tiny_cfg):
    cond = tiny_model.condition(["a dog barks", "rain"], seconds_start=0.0, seconds_total=[10.0, 4.5])
    L = tiny_cfg.context_length
    assert cond.context.shape == (2, L, tiny_cfg.text.dim)
    assert cond.context_mask[:, -2:].all()
    assert cond.global_cond.shape == (2, tiny_cfg.dit.global_cond_dim)
    v = tiny_model.dit(torch.randn(2, 64, 5), torch.rand(2), *cond)
    assert v.shape == (2, 64, 5)


def test_text_encoder_on_static_buffers_equals_the_plain_encoder():
    """cuda_graph="eager" runs the graph path's buffers on the CPU: one static encoder per batch shape, each
    batch's own embeddings, a copied model capturing its own; a bad mode is refused."""
    enc = E.ETTAModel.from_preset("tiny").text_encoder
    batches = [["a dog barks", "rain"], ["thunder, then silence", "a bell"], ["one prompt"]]
    for prompts in batches:
        want, want_mask = enc(prompts)
        got, mask = enc(prompts, cuda_graph="eager")
        assert torch.equal(mask, want_mask) and torch.equal(got, want)
    assert [key[0] for key in enc.graphs.graphs] == [(2, 128), (1, 128)]  # (batch, max_length) shapes
    assert not copy.deepcopy(enc).graphs.graphs  # a copy's graphs would read the original's buffers
    with pytest.raises(ValueError, match=r"cuda_graph='always' is not one of \(True, 'step', False, 'eager'\)"):
        enc(["x"], cuda_graph="always")


@pytest.mark.gpu
def test_text_encoder_cuda_graph_equals_the_plain_encoder():
    enc = E.ETTAModel.from_preset("tiny").text_encoder.cuda()
    for prompts in (["a dog barks", "rain"], ["thunder", "a bell"], ["sea waves", "wind"]):  # warm, capture, replay
        want, _ = enc(prompts)
        got, _ = enc(prompts, cuda_graph=True)
        assert (got - want).abs().max() <= 1e-5 * want.abs().max()
    (static,) = enc.graphs.graphs.values()
    assert static.graph is not None


@pytest.mark.parametrize("preset", ["tiny", "demo"])
def test_random_text_encoder_knows_which_event_a_word_belongs_to(preset):
    """A random T5 looks left and right (``_look_around``): "low" in a first event resembles "low" in another
    first event more than "low" in a second event. With the default init the three features are the same."""
    from etta_engine.models.text import _look_around

    torch.manual_seed(0)
    enc = E.T5TextEncoder.random(E.get_preset(preset).text).eval()
    first, other_first, second = (
        "a low beep followed by a square tone",
        "a low tone followed by pink noise",
        "pink noise followed by a low tone",
    )

    def low(encoder, prompt):
        with torch.no_grad():
            feats, _ = encoder([prompt])
        i = prompt.index("low")
        return feats[0, i : i + 3].flatten()

    def margin(encoder):
        a, b, c = (low(encoder, p) for p in (first, other_first, second))
        return (torch.cosine_similarity(a, b, dim=0) - torch.cosine_similarity(a, c, dim=0)).item()

    assert margin(enc) > 0.02
    attention = enc.model.encoder.block[0].layer[0].SelfAttention
    with torch.no_grad():
        attention.relative_attention_bias.weight.normal_(0, 0.05)  # about transformers' default init
    assert abs(margin(enc)) < 0.005
    _look_around(attention)
    assert margin(enc) > 0.02
