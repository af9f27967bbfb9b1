"""Text input (issue 21): tokenize strings for a transformer classifier's ONNX graph.

Runs inside the bundle with the ``tokenizers`` package only (no torch, no transformers).
The spec of a text model::

    {"input_mode": "text", "n_features": 1,
     "input_names": ["input_ids", "attention_mask"(, "token_type_ids")],
     "text": {"tokenizer_file": "tokenizer.json"  (in the bundle) | "tokenizer_json": "..." (in memory),
              "max_length": 512, "truncation_side": "right", "pad_id": 0, "pad_token": "[PAD]"}}

A batch is an object array [N, 1] of ``str`` (the same slicing/``len`` as other modes).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from .validation import ClientError

#: characters of one text accepted at /predict (tokenization of megabytes blocks a worker)
MAX_TEXT_CHARS = 100_000


def load_tokenizer(spec: dict, model_path: Any = None):
    """The spec's tokenizer with its truncation and padding settings."""
    from tokenizers import Tokenizer

    t = spec.get("text") or {}
    if t.get("tokenizer_json"):
        tok = Tokenizer.from_str(t["tokenizer_json"])
    else:
        name = t.get("tokenizer_file", "tokenizer.json")
        base = Path(os.fspath(model_path)).parent if isinstance(model_path, (str, os.PathLike)) else Path(".")
        tok = Tokenizer.from_file(str(base / name))
    tok.no_truncation()
    tok.no_padding()
    return tok


class TextEncoder:
    """Strings -> graph feeds, plus how many tokens each text lost to truncation."""

    def __init__(self, spec: dict, model_path: Any = None):
        t = spec.get("text") or {}
        self.tokenizer = load_tokenizer(spec, model_path)
        self.max_length = int(t.get("max_length") or 512)
        self.truncation_side = t.get("truncation_side", "right")
        self.input_names = list(spec["input_names"])
        self.pad_id = int(t.get("pad_id", 0))
        self.pad_token = t.get("pad_token", "[PAD]")
        self.tokenizer.enable_truncation(self.max_length, direction=self.truncation_side)
        self.tokenizer.enable_padding(pad_id=self.pad_id, pad_token=self.pad_token)

    def encode(self, X) -> tuple[dict, np.ndarray, list]:
        """(feeds, tokens dropped per text, encodings)."""
        texts = [str(v) for v in np.asarray(X, dtype=object).reshape(-1)]
        encs = self.tokenizer.encode_batch(texts)
        feeds = {}
        for name in self.input_names:
            attr = {"input_ids": "ids", "attention_mask": "attention_mask",
                    "token_type_ids": "type_ids"}[name]
            feeds[name] = np.asarray([getattr(e, attr) for e in encs], dtype=np.int64)
        # overflow pieces carry their own special tokens and padding: count content tokens only
        dropped = np.asarray([sum(m and not s for o in e.overflowing
                                  for m, s in zip(o.attention_mask, o.special_tokens_mask))
                              for e in encs], dtype=np.int64)
        return feeds, dropped, encs

    def feeds(self, X) -> dict:
        return self.encode(X)[0]


def as_texts(X) -> np.ndarray:
    """A list/Series/array of strings as the [N, 1] object batch."""
    vals = list(X.tolist() if hasattr(X, "tolist") else X)
    return np.asarray(vals, dtype=object).reshape(-1, 1)


def parse_texts(rows: list) -> np.ndarray:
    """Validate ``{"inputs": ["text", ...]}`` (already a non-empty list within the row limit)."""
    out = []
    for i, v in enumerate(rows):
        if isinstance(v, list) and len(v) == 1:   # [["text"]] rows, as other modes send them
            v = v[0]
        if not isinstance(v, str):
            raise ClientError(400, f"Input {i} is not a string: {type(v).__name__}.",
                              hint='Send {"inputs": ["a text", "another text"]}.',
                              expected="string", received=type(v).__name__)
        if not v.strip():
            raise ClientError(400, f"Input {i} is an empty string.",
                              hint="Send texts with at least one non-space character.",
                              expected="non-empty string", received=repr(v))
        if len(v) > MAX_TEXT_CHARS:
            raise ClientError(400, f"Input {i} has {len(v)} characters; the limit is {MAX_TEXT_CHARS}.",
                              hint="Shorten the text; it would be truncated to the model's "
                                   "maximum length anyway.",
                              expected=f"<= {MAX_TEXT_CHARS} characters", received=len(v))
        out.append(v)
    return np.asarray(out, dtype=object).reshape(-1, 1)


def truncation_json(dropped: np.ndarray, max_length: int) -> list:
    """Per text: whether it was truncated, and how many tokens were dropped."""
    return [{"truncated": bool(d > 0), "tokens_dropped": int(d), "max_length": int(max_length)}
            for d in np.asarray(dropped).reshape(-1)]
