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

from .clienterror import ClientError

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


# --- per-token explanations (SHAP partition over a Text masker, LIME text) ------------------------

class ShapTokenizer:
    """The minimal Hugging Face tokenizer API that ``shap.maskers.Text`` needs, over a
    ``tokenizers.Tokenizer`` (no transformers in the bundle)."""

    def __init__(self, tokenizer, mask_token: str | None):
        self._tok = tokenizer
        self.mask_token = mask_token if mask_token and tokenizer.token_to_id(mask_token) is not None else None
        self.mask_token_id = tokenizer.token_to_id(self.mask_token) if self.mask_token else None

    def __call__(self, s, return_offsets_mapping: bool = False, **_):
        enc = self._tok.encode(s)
        out = {"input_ids": list(enc.ids)}
        if return_offsets_mapping:
            out["offset_mapping"] = [tuple(o) for o in enc.offsets]
        return out


DEFAULT_TEXT_BUDGET = {"max_evals": 300, "budget_s": 10.0, "max_rows": 8, "num_samples": 300}


def _class_index(classes: list, probs: np.ndarray, wanted) -> int:
    if wanted is None:
        return int(np.argmax(probs))
    if isinstance(wanted, int) and not isinstance(wanted, bool) and 0 <= wanted < len(classes):
        return wanted
    if str(wanted) in [str(c) for c in classes]:
        return [str(c) for c in classes].index(str(wanted))
    raise ClientError(400, f"Unknown class {wanted!r}.", hint=f"Use one of {classes} or its index.",
                      expected=classes, received=wanted)


class TextExplainer:
    """Explain texts of a text model (an :class:`OnnxModel` in text mode) per token, for one class.

    SHAP: ``shap.explainers.Partition`` with a ``shap.maskers.Text`` (masked tokens become the
    tokenizer's mask token); ``base_value + sum(values)`` equals the model's probability for the
    class on the whole text.  LIME: ``LimeTextExplainer`` (word-level, a local linear fit, not
    additive).  Cost is bounded by ``max_evals`` model evaluations (SHAP), ``num_samples``
    (LIME) and ``max_rows`` texts per request; the answer reports evaluations and seconds.
    """

    kind = "text"

    def __init__(self, model, budget: dict | None = None):
        self.model = model
        self.budget = dict(DEFAULT_TEXT_BUDGET, **(budget or {}))
        self.max_rows = int(self.budget["max_rows"])
        t = model.spec.get("text") or {}
        self.masker_tokenizer = ShapTokenizer(model.text.tokenizer.__class__.from_str(
            model.text.tokenizer.to_str()), t.get("mask_token"))
        self.masker_tokenizer._tok.no_truncation()
        self.masker_tokenizer._tok.no_padding()
        self.classes = list(model.classes or [])
        self._shap = None
        self._n_evals = 0

    def _f(self, texts) -> np.ndarray:
        texts = [str(s) for s in np.asarray(texts, dtype=object).reshape(-1)]
        self._n_evals += len(texts)
        return self.model.run(np.asarray(texts, dtype=object).reshape(-1, 1))["probabilities"]

    def _options(self, options: dict) -> dict:
        out = dict(self.budget)
        for key, cast in (("max_evals", int), ("budget_s", float), ("num_samples", int)):
            if options.get(key) is not None:
                try:
                    v = cast(options[key])
                except (TypeError, ValueError) as exc:
                    raise ClientError(400, f"{key!r} must be a number.",
                                      received=str(options[key])[:40]) from exc
                limit = cast(self.budget[key]) * 10
                if not 0 < v <= limit:
                    raise ClientError(400, f"{key!r} must be in (0, {limit}].", expected=f"<= {limit}",
                                      received=v)
                out[key] = v
        return out

    def explain(self, X, method: str = "shap", options: dict | None = None) -> dict:
        import time

        options = dict(options or {})
        if method not in ("shap", "lime"):
            raise ClientError(400, f"Unknown method {method!r}.", hint="Use 'shap' or 'lime'.",
                              expected=["shap", "lime"], received=method)
        opts = self._options(options)
        texts = [str(v) for v in np.asarray(X, dtype=object).reshape(-1)]
        t_import = time.perf_counter()
        if method == "shap":   # the first import takes seconds: not charged to the texts' budget
            import shap  # noqa: F401
        else:
            import lime.lime_text  # noqa: F401
        import_s = time.perf_counter() - t_import
        probs = self._f(texts)
        t_start = time.perf_counter()
        rows = []
        for i, s in enumerate(texts):
            k = _class_index(self.classes, probs[i], options.get("class"))
            t0, self._n_evals = time.perf_counter(), 0
            if time.perf_counter() - t_start > opts["budget_s"]:
                rows.append({"text": s, "skipped": "time budget spent on earlier texts"})
                continue
            row = (self._shap_row(s, k, opts) if method == "shap" else self._lime_row(s, k, opts))
            row.update(text=s, method=method, class_index=k, label=self.classes[k] if self.classes else k,
                       output=float(probs[i][k]), output_space="probability",
                       evaluations=self._n_evals, seconds=round(time.perf_counter() - t0, 4))
            rows.append(row)
        return {"explanations": rows, "method": method,
                "cost": {"seconds": round(time.perf_counter() - t_start, 4),
                         "import_seconds": round(import_s, 4),
                         "budget": {k: opts[k] for k in ("max_evals", "budget_s", "num_samples")},
                         "note": ("SHAP costs about max_evals model runs per text (batched); LIME "
                                  "num_samples runs. Pass max_evals/num_samples/budget_s to trade "
                                  "precision for time.")}}

    def _shap_row(self, s: str, k: int, opts: dict) -> dict:
        import shap

        masker = shap.maskers.Text(self.masker_tokenizer,
                                   mask_token=self.masker_tokenizer.mask_token or "...")
        ex = shap.explainers.Partition(lambda t: self._f(t)[:, k], masker)
        exp = ex([s], max_evals=int(opts["max_evals"]), silent=True)
        values = np.asarray(exp.values[0], dtype=np.float64).reshape(-1)
        segments = list(exp.data[0])
        base = float(np.asarray(exp.base_values).reshape(-1)[0])
        enc = self.masker_tokenizer._tok.encode(s)
        offsets = list(enc.offsets)
        tokens = []
        for j, (seg, v) in enumerate(zip(segments, values)):
            if seg == "" and v == 0.0:     # special tokens ([CLS]/[SEP]) are kept, never players
                continue
            start, end = offsets[j] if j < len(offsets) else (None, None)
            tokens.append({"token": seg, "start": start, "end": end, "value": float(v)})
        return {"base_value": base, "tokens": tokens}

    def _lime_row(self, s: str, k: int, opts: dict) -> dict:
        from lime.lime_text import LimeTextExplainer

        ex = LimeTextExplainer(class_names=[str(c) for c in self.classes] or None, random_state=0,
                               mask_string=self.masker_tokenizer.mask_token, bow=False)
        exp = ex.explain_instance(s, lambda t: self._f(t), labels=(k,),
                                  num_features=10_000, num_samples=int(opts["num_samples"]))
        weights = dict(exp.as_map()[k])
        idx = exp.domain_mapper.indexed_string
        tokens = []
        for j in range(idx.num_words()):
            start = int(np.asarray(idx.string_position(j)).reshape(-1)[0])
            word = str(idx.word(j))
            tokens.append({"token": word, "start": start,
                           "end": None if start is None else start + len(word),
                           "value": float(weights.get(j, 0.0))})
        return {"intercept": float(exp.intercept[k]), "local_r2": float(exp.score), "tokens": tokens}
