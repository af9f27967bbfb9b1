"""Hugging Face ``transformers`` sequence classifiers (BERT, DistilBERT, RoBERTa...) with their
fast tokenizer (issue 21).

Exported with ``torch.onnx.export`` (TorchScript path, ``dynamo=False``) with dynamic batch and
sequence axes.  Why not Optimum's exporter: it adds a dependency (and its own transformers
version pin) for what is one forward() call with two or three int64 inputs here; the TorchScript
exporter handles BERT/DistilBERT/RoBERTa encoders and verification against the native model
catches any mismatch.  Single-text classification only (no text pairs yet).
"""

from __future__ import annotations

import io
from typing import Any

import numpy as np

from ..errors import ConversionError, InvalidInputError, UnsupportedModelError
from .base import Adapter, Converted, class_modules

OPSET = 17
_KNOWN_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def is_text_model(obj: Any) -> bool:
    return (any(m.startswith("transformers.") for m in class_modules(obj))
            and type(obj).__name__.endswith("ForSequenceClassification"))


class HFTextAdapter(Adapter):
    """A ``*ForSequenceClassification`` model; needs ``tokenizer=`` (a fast tokenizer)."""

    framework = "transformers"
    input_kind = "text"
    has_native_pickle = False
    #: what the benchmark (and so the int8 gate) measures: transformer batches are costly
    bench_batch_sizes = (1, 16)
    explain_note = ("Text: SHAP's partition explainer with a Text masker over the served ONNX "
                    "graph; each token is a player (masked tokens become the mask token), so "
                    "base + sum(values) equals the served output exactly.")

    def __init__(self, model: Any, *, task: str | None = None, tokenizer: Any = None):
        super().__init__(model, task=task)
        self.tokenizer = tokenizer

    @classmethod
    def matches(cls, obj: Any) -> bool:
        return is_text_model(obj)

    # -- what the model is ---------------------------------------------------------------
    def task(self) -> str:
        if self._task == "regressor" or getattr(self.model.config, "problem_type", None) == "regression":
            return "regressor"
        return "classifier"

    def classes(self) -> list:
        id2label = getattr(self.model.config, "id2label", None) or {}
        n = int(self.model.config.num_labels)
        return [str(id2label.get(i, id2label.get(str(i), f"LABEL_{i}"))) for i in range(n)]

    def n_features(self):
        return 1

    def feature_names(self):
        return ["text"]

    def check_fitted(self) -> None:
        if self.tokenizer is None:
            raise InvalidInputError(
                f"{self.model_type} needs its tokenizer.",
                hint="Pass tokenizer=tok to nbdeploy.deploy (or --tokenizer tok to %deploy).")
        if getattr(self.tokenizer, "backend_tokenizer", None) is None:
            raise UnsupportedModelError(
                f"{type(self.tokenizer).__name__} is not a fast tokenizer (no tokenizer.json).",
                hint="Load it with AutoTokenizer.from_pretrained(..., use_fast=True) or wrap a "
                     "`tokenizers.Tokenizer` in PreTrainedTokenizerFast(tokenizer_object=...).")
        if self.task() != "classifier":
            raise UnsupportedModelError("Only text classification is supported for transformers models.",
                                        hint="Regression and text-pair heads may come later.")

    # -- tokenizer settings the bundle reproduces ------------------------------------------
    def max_length(self) -> int:
        limits = [int(self.tokenizer.model_max_length)] if self.tokenizer.model_max_length < 1e9 else []
        pos = getattr(self.model.config, "max_position_embeddings", None)
        if pos:
            # RoBERTa reserves positions for the padding index; 512 for BERT-style models
            offset = 2 if getattr(self.model.config, "model_type", "") in ("roberta", "xlm-roberta",
                                                                          "camembert") else 0
            limits.append(int(pos) - offset)
        return min(limits) if limits else 512

    def input_names(self) -> list[str]:
        names = [n for n in self.tokenizer.model_input_names if n in _KNOWN_INPUTS]
        if "input_ids" not in names:
            names.insert(0, "input_ids")
        return names

    def text_spec(self, *, with_json: bool = True) -> dict:
        tok = self.tokenizer
        pad_id = tok.pad_token_id if tok.pad_token_id is not None else 0
        spec = {"max_length": self.max_length(),
                "truncation_side": getattr(tok, "truncation_side", "right") or "right",
                "pad_id": int(pad_id), "pad_token": str(tok.pad_token or "[PAD]"),
                "tokenizer_file": "tokenizer.json",
                "mask_token": str(tok.mask_token) if tok.mask_token else None}
        if with_json:
            spec["tokenizer_json"] = tok.backend_tokenizer.to_str()
        return spec

    # -- native calls ------------------------------------------------------------------
    def _encode(self, X):
        texts = [str(v) for v in np.asarray(X, dtype=object).reshape(-1)]
        return self.tokenizer(texts, padding=True, truncation=True, max_length=self.max_length(),
                              return_tensors="pt")

    def logits(self, X) -> np.ndarray:
        import torch

        self.model.eval()
        out = []
        for i in range(0, len(X), 64):
            enc = self._encode(X[i:i + 64])
            enc = {k: v for k, v in enc.items() if k in self.input_names()}
            with torch.no_grad():
                out.append(self.model(**enc).logits.detach().to(torch.float64).cpu().numpy())
        return np.concatenate(out) if out else np.zeros((0, len(self.classes())))

    def native_call(self):
        return (lambda X: self.logits(X)), "tokenizer + forward (no_grad)"

    def predict(self, X) -> dict:
        z = self.logits(X)
        z = z - z.max(axis=1, keepdims=True)
        p = np.exp(z)
        p /= p.sum(axis=1, keepdims=True)
        return {"label": np.asarray(self.classes(), dtype=object)[p.argmax(axis=1)], "probabilities": p}

    def native_output(self, Xn, space):
        if space == "probability":
            return self.predict(Xn)["probabilities"]
        return self.logits(Xn)

    def alternative_explainer(self) -> str:
        return "shap.Explainer(pipeline) with a Text masker on the native model"

    # -- conversion --------------------------------------------------------------------
    def to_onnx(self, X, *, feature_names=None, opset=None) -> Converted:
        import torch

        names = self.input_names()
        enc = self._encode(X[:2])
        self.model.eval()
        buf = io.BytesIO()
        axes = {n: {0: "batch", 1: "sequence"} for n in names}
        axes["logits"] = {0: "batch"}
        try:
            torch.onnx.export(self.model, tuple(enc[n] for n in names), buf, input_names=names,
                              output_names=["logits"], dynamic_axes=axes,
                              opset_version=opset or OPSET, dynamo=False)
        except Exception as exc:
            raise ConversionError(f"torch.onnx.export failed for {self.model_type}: {exc}",
                                  hint="BERT-, DistilBERT- and RoBERTa-style encoders are supported; "
                                       "try model.config._attn_implementation = 'eager'.") from exc
        import onnx

        onx = onnx.load_model_from_string(buf.getvalue())
        spec = {"task": "classifier", "input_mode": "text", "input_names": names,
                "classes": self.classes(), "outputs": {"probabilities": "logits"},
                "postprocess": "softmax", "text": self.text_spec()}
        return Converted(onx, spec, converter="torch.onnx (dynamic batch and sequence axes)",
                         notes=[f"Texts are tokenized in the bundle with the `tokenizers` package "
                                f"(tokenizer.json), truncated to {spec['text']['max_length']} tokens "
                                f"({spec['text']['truncation_side']} side); single texts, not pairs."])
