"""The T5 text encoder: prompts -> token embeddings (B, max_length, dim) and mask (frozen, except when a
small preset's random T5 is trained with the DiT: ``etta train dit --train-text-encoder``).

A pretrained T5 is loaded with ``transformers`` from a local directory (or the local Hugging Face
cache) and never downloaded. Small presets use a randomly initialised T5 with a byte-level (ByT5)
tokenizer, which needs no vocabulary file; its weights travel in the model's checkpoint.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from etta_engine.config import TextConfig
from etta_engine.graphs import GraphCache, check_cuda_graph_mode, static_mode
from etta_engine.runtime.tokenizer import PADDINGS, padded_width

BYTE_VOCAB_SIZE = 384  # ByT5: 3 special tokens + 256 bytes + 125 sentinel ids


def _transformers():
    try:
        import transformers
    except ImportError as e:  # pragma: no cover - transformers is a core dependency
        raise ImportError("the text encoder needs `transformers`: pip install transformers") from e
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    return transformers


LOOK_AROUND_BIAS = 8.0


@torch.no_grad()
def _look_around(attention: nn.Module) -> None:
    """Give a random T5's relative-position biases a fixed pattern: head 0 attends to the tokens on the left,
    head 1 to those on the right, head 2 to the two nearest on each side, any others to all (bias 0).

    With the default random init (biases of std 0.08) attention is nearly uniform and every token's feature
    is its byte plus the prompt's average: the same word gets the same feature (cosine 0.9999) wherever it
    stands, so a frozen random encoder cannot say which event of "a low beep followed by white noise" is low.
    Looking left and right makes the feature depend on what precedes and follows it, so a word of the first
    event resembles the same word in other first events more than in second events (cosine 0.985 against
    0.900 for the demo preset's "low"). Only the T5 layer that owns the biases is touched (all layers share it).
    """
    bias = attention.relative_attention_bias.weight  # (buckets, heads); buckets [0, half) look left or at self
    half = attention.relative_attention_num_buckets // 2
    patterns = ([*range(1, half)], [*range(half + 1, 2 * half)], [0, 1, 2, half + 1, half + 2])
    bias.zero_()
    for head, buckets in enumerate(patterns[: bias.shape[1]]):
        bias[buckets, head] = LOOK_AROUND_BIAS


class T5TextEncoder(nn.Module):
    """Frozen T5 encoder. ``forward(prompts)`` -> (embeddings (B, L, dim) fp32, padding zeroed; mask (B, L) bool),
    with L = ``cfg.max_length``: prompts are padded to it, and longer ones are refused (or truncated).

    ``padding="longest"`` pads to the batch's longest prompt instead, rounded up to a multiple of 32 tokens
    (:func:`~etta_engine.runtime.tokenizer.padded_width`: few shapes, so captured CUDA graphs are reused). The
    real tokens' embeddings are the same up to float rounding (the attention mask gives padding exactly zero
    weight, and T5's position biases are relative), and so is everything the DiT computes from them (its
    cross-attention masks the padding too); the encoder, the prompt K/V and every step's cross-attention then
    run on tens of tokens, not 512."""

    def __init__(self, cfg: TextConfig, model: nn.Module, tokenizer) -> None:
        super().__init__()
        self.cfg = cfg
        self.model = model.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        d_model = model.config.d_model
        if d_model != cfg.dim:
            raise ValueError(f"the T5 encoder has d_model={d_model} but the model config expects text.dim={cfg.dim}")
        self.graphs = GraphCache()  # the inference encoder's CUDA graphs, per batch shape (forward(cuda_graph=...))

    @classmethod
    def from_pretrained(cls, cfg: TextConfig, path: str | os.PathLike | None = None) -> T5TextEncoder:
        """Load a T5 encoder and its tokenizer from ``path`` (or ``cfg.pretrained``), offline only."""
        source = os.fspath(path) if path is not None else cfg.pretrained
        if source is None:
            raise ValueError("TextConfig.pretrained is None and no path was given: use T5TextEncoder.random(cfg)")
        tf = _transformers()
        try:
            tokenizer = tf.AutoTokenizer.from_pretrained(source, local_files_only=True)
            model = tf.T5EncoderModel.from_pretrained(source, local_files_only=True)
        except (OSError, ValueError) as e:
            raise FileNotFoundError(
                f"could not load a T5 encoder from {source!r} without downloading: pass a local directory holding "
                f"config.json, the weights and the tokenizer files (for ETTA: google-t5/t5-base). Cause: {e}"
            ) from e
        return cls(cfg, model, tokenizer)

    @classmethod
    def random(cls, cfg: TextConfig) -> T5TextEncoder:
        """A randomly initialised T5 encoder of the size in ``cfg``, with a byte-level tokenizer."""
        tf = _transformers()
        t5_config = tf.T5Config(
            vocab_size=BYTE_VOCAB_SIZE,
            d_model=cfg.dim,
            d_kv=cfg.d_kv,
            d_ff=cfg.d_ff,
            num_layers=cfg.layers,
            num_heads=cfg.heads,
            dropout_rate=0.0,
            feed_forward_proj="relu",
        )
        model = tf.T5EncoderModel(t5_config)
        _look_around(model.encoder.block[0].layer[0].SelfAttention)
        return cls(cfg, model, tf.ByT5Tokenizer())

    @property
    def device(self) -> torch.device:
        return self.model.get_input_embeddings().weight.device

    def tokenize(
        self, prompts: Sequence[str], truncate: bool = False, padding: str = "max_length"
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Token ids (B, L) and mask (B, L) bool, L = max_length (or, with ``padding="longest"``, the longest
        prompt's length rounded up to a multiple of 32); over-long prompts raise unless ``truncate``."""
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r} is not one of {PADDINGS}")
        if isinstance(prompts, str) or not isinstance(prompts, Sequence):
            raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
        if len(prompts) == 0:
            raise ValueError("prompts is empty; give at least one prompt")
        for i, p in enumerate(prompts):
            if not isinstance(p, str):
                raise TypeError(f"prompt {i} must be a string, got {type(p).__name__}")
        L = self.cfg.max_length
        if not truncate:
            lengths = [len(ids) for ids in self.tokenizer(list(prompts))["input_ids"]]
            for i, n in enumerate(lengths):
                if n > L:
                    raise ValueError(
                        f"prompt {i} is {n} tokens long, over the text encoder's limit of {L} tokens "
                        "(text.max_length); shorten it or pass truncate=True (--truncate on the command line)"
                    )
        enc = self.tokenizer(list(prompts), padding=padding, max_length=L, truncation=True, return_tensors="pt")
        ids, mask = enc["input_ids"], enc["attention_mask"].bool()
        extra = padded_width(ids.shape[1], L, padding) - ids.shape[1]
        return F.pad(ids, (0, extra), value=self.tokenizer.pad_token_id), F.pad(mask, (0, extra))

    def encode(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Token ids (B, L) and mask (B, L) bool -> embeddings (B, L, dim) fp32, padding zeroed. Differentiable:
        training with ``--train-text-encoder`` calls it on the T5 it trains."""
        # The mask goes in as an additive (B, 1, 1, L) bias, which T5 uses as it is: from a (B, L) mask it would
        # check on the host whether any token is padding (a device sync in every call).
        dtype = self.model.get_input_embeddings().weight.dtype
        bias = torch.zeros(mask.shape, dtype=dtype, device=mask.device).masked_fill(~mask, torch.finfo(dtype).min)
        hidden = self.model(input_ids=ids, attention_mask=bias[:, None, None, :]).last_hidden_state  # (B, L, dim)
        return hidden.float() * mask[..., None]

    @torch.no_grad()
    def forward(
        self,
        prompts: Sequence[str],
        truncate: bool = False,
        padding: str = "max_length",
        cuda_graph: bool | str = False,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Embeddings and mask of ``prompts`` (:meth:`tokenize`, :meth:`encode`). ``cuda_graph``: True (or "step")
        replays the encoder from a CUDA graph per batch shape on a CUDA device (a shape's first call warms up, its
        second captures; padded to max_length, every batch of one size has one shape); "eager" runs the same
        static buffers eagerly on any device; False runs the plain encoder."""
        check_cuda_graph_mode(cuda_graph)
        ids, mask = self.tokenize(prompts, truncate, padding)
        ids, mask = ids.to(self.device, non_blocking=True), mask.to(self.device, non_blocking=True)
        mode = static_mode(cuda_graph, ids)
        if mode is None:
            return self.encode(ids, mask), mask
        # The weights' addresses are part of the key: a graph reads them where they were at capture.
        key = (tuple(ids.shape), str(ids.device), tuple(p.data_ptr() for p in self.parameters()))
        return self.graphs.call(key, self.encode, (ids, mask), (), self, mode == "capture"), mask
