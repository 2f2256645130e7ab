"""Tokenizers of the runtime, without PyTorch or ``transformers``.

- :class:`ByteTokenizer`: ByT5's byte-level tokenizer (the random-init text encoders of the small presets):
  UTF-8 bytes + 3, with ``<pad>`` = 0, ``</s>`` = 1, ``<unk>`` = 2 and ``<extra_id_i>`` = 259 + i written
  in the text recognised as special tokens (whitespace around the first three is dropped, as
  ``transformers.ByT5Tokenizer`` does), then ``</s>`` appended unless the ids already end with it.
- :class:`JsonTokenizer`: a pretrained T5's tokenizer saved as ``tokenizer.json`` and run with the
  ``tokenizers`` library (what ``transformers``' fast T5 tokenizer runs).

Both return ids and mask (B, L) int64, padded to ``max_length`` (or to the longest prompt, see
:func:`padded_width`) like :meth:`etta_engine.models.text.T5TextEncoder.tokenize`, and refuse over-long prompts
unless ``truncate``.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path

import numpy as np

PAD, EOS, UNK = 0, 1, 2
_OFFSET = 3  # ids of the bytes start after the three special tokens
_EXTRA_IDS = 125
_SPECIAL = re.compile(r"\s*(<pad>|</s>|<unk>)\s*|<extra_id_(0|[1-9][0-9]*)>")
PADDINGS = ("max_length", "longest")
# padding="longest" rounds the width up to a multiple of this: a few memory lengths for all prompts, so that
# what is keyed by shape (captured CUDA graphs, TensorRT shapes) is reused across prompts.
PAD_MULTIPLE = 32


def padded_width(longest: int, max_length: int, padding: str) -> int:
    """The token width of a batch whose longest prompt has ``longest`` tokens: ``max_length`` for
    padding="max_length", else ``longest`` rounded up to a multiple of :data:`PAD_MULTIPLE` (at most
    ``max_length``)."""
    if padding not in PADDINGS:
        raise ValueError(f"padding={padding!r} is not one of {PADDINGS}")
    if padding == "max_length":
        return max_length
    return min(max_length, -(-longest // PAD_MULTIPLE) * PAD_MULTIPLE)


def check_prompts(prompts) -> list[str]:
    if isinstance(prompts, str) or not isinstance(prompts, Sequence):
        raise TypeError(f"prompts must be a list of strings, got {type(prompts).__name__}")
    if len(prompts) == 0:
        raise ValueError("prompts is empty; give at least one prompt")
    for i, p in enumerate(prompts):
        if not isinstance(p, str):
            raise TypeError(f"prompt {i} must be a string, got {type(p).__name__}")
    return list(prompts)


class _Tokenizer:
    max_length: int
    pad_id: int

    def _encode_one(self, text: str) -> list[int]:
        raise NotImplementedError

    def _truncate(self, ids: list[int], text: str) -> list[int]:
        raise NotImplementedError

    def __call__(
        self, prompts: Sequence[str], *, truncate: bool = False, padding: str = "max_length"
    ) -> tuple[np.ndarray, np.ndarray]:
        """Token ids and mask, both (B, L) int64, L = :func:`padded_width` of the prompts."""
        prompts = check_prompts(prompts)
        if padding not in PADDINGS:
            raise ValueError(f"padding={padding!r} is not one of {PADDINGS}")
        L = self.max_length
        rows = []
        for i, text in enumerate(prompts):
            ids = self._encode_one(text)
            if len(ids) > L:
                if not truncate:
                    raise ValueError(
                        f"prompt {i} is {len(ids)} tokens long, over the text encoder's limit of {L} tokens "
                        "(text.max_length); shorten it or pass truncate=True (--truncate on the command line)"
                    )
                ids = self._truncate(ids, text)
            rows.append(ids)
        width = padded_width(max(len(r) for r in rows), L, padding)
        input_ids = np.full((len(rows), width), self.pad_id, dtype=np.int64)
        mask = np.zeros((len(rows), width), dtype=np.int64)
        for i, r in enumerate(rows):
            input_ids[i, : len(r)] = r
            mask[i, : len(r)] = 1
        return input_ids, mask


class ByteTokenizer(_Tokenizer):
    """ByT5's tokenizer (see the module docstring), checked against ``transformers.ByT5Tokenizer`` in the tests."""

    pad_id = PAD

    def __init__(self, max_length: int) -> None:
        self.max_length = int(max_length)

    @staticmethod
    def _pieces(text: str) -> list[int]:
        ids: list[int] = []
        pos = 0
        for m in _SPECIAL.finditer(text):
            special, extra = m.group(1), m.group(2)
            if extra is not None and int(extra) >= _EXTRA_IDS:
                continue  # not a special token: its characters are plain bytes
            ids += [b + _OFFSET for b in text[pos : m.start()].encode("utf-8")]
            if special is not None:
                ids.append({"<pad>": PAD, "</s>": EOS, "<unk>": UNK}[special])
            else:
                ids.append(_OFFSET + 256 + int(extra))
            pos = m.end()
        ids += [b + _OFFSET for b in text[pos:].encode("utf-8")]
        return ids

    def _encode_one(self, text: str) -> list[int]:
        ids = self._pieces(text)
        return ids if ids and ids[-1] == EOS else [*ids, EOS]

    def _truncate(self, ids: list[int], text: str) -> list[int]:
        # As transformers: truncate the text's ids to leave room for </s>, then add it unless present.
        body = self._pieces(text)[: self.max_length - 1]
        return body if body and body[-1] == EOS else [*body, EOS]


class JsonTokenizer(_Tokenizer):
    """A ``tokenizers`` tokenizer from ``tokenizer.json`` (its post-processor appends ``</s>``)."""

    def __init__(self, path: str | Path, max_length: int, pad_id: int) -> None:
        try:
            from tokenizers import Tokenizer
        except ImportError as e:
            raise ImportError(
                "this export's text encoder uses a pretrained tokenizer, which needs the `tokenizers` package: "
                "pip install 'etta_engine[runtime]'"
            ) from e
        self.max_length, self.pad_id = int(max_length), int(pad_id)
        self._tok = Tokenizer.from_file(str(path))
        self._tok.no_padding()
        self._tok.no_truncation()
        self._truncating = Tokenizer.from_file(str(path))
        self._truncating.no_padding()
        self._truncating.enable_truncation(max_length=self.max_length)

    def _encode_one(self, text: str) -> list[int]:
        return list(self._tok.encode(text).ids)

    def _truncate(self, ids: list[int], text: str) -> list[int]:
        return list(self._truncating.encode(text).ids)
