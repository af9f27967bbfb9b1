"""Run an ONNX model and normalise its outputs (used in the notebook and in the bundle).

A *spec* (plain JSON, stored in the bundle as ``model/spec.json``) says how to feed the graph
and read its outputs: the task, the input mode (tensor, columns, table, text), input names,
classes, output names, post-processing, and for N-D, image and text models their shape,
preprocessing and tokenizer.  Its keys, what each means and which input modes use it are
defined once, in ``runtime/spec.py`` (:class:`~nbdeploy.runtime.spec.ModelSpec`).
:func:`make_feeds` is the one rule that turns a batch into the graph's inputs;
:class:`OnnxModel` runs the graph and returns ``{"label", "probabilities"}`` or ``{"value"}``.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from .spec import ModelSpec


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def make_session(model: Any, *, providers: list[str] | None = None, threads: int | None = None):
    """Create an onnxruntime session from a path or serialized bytes."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
        opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3  # errors only: shape warnings from converters are noise
    if providers is None:
        providers = ["CPUExecutionProvider"]
    if isinstance(model, (str, os.PathLike)):
        model = os.fspath(model)
    return ort.InferenceSession(model, sess_options=opts, providers=providers)


def make_feeds(X: np.ndarray, spec: ModelSpec, *, dtype=np.float32, input_names: list[str] | None = None,
               text=None) -> dict:
    """How a batch is fed to the graph, for every ``input_mode`` (one rule for the notebook, the
    quantizer's calibration and the bundle).

    ``tensor``: one 2-D ``dtype`` tensor; ``columns``: one [N, 1] tensor per input name;
    ``table``: one typed [N, 1] tensor per column (``runtime/columns.table_feeds``); ``text``:
    token ids from ``text`` (a :class:`~nbdeploy.runtime.text.TextEncoder`, built from ``spec``
    when not given).  ``input_names`` default to ``spec["input_names"]``, then ``["input"]``.
    """
    mode = spec.get("input_mode", "tensor")
    if mode == "text":
        if text is None:
            from .text import TextEncoder

            text = TextEncoder(spec)
        return text.feeds(X)
    if mode == "table":
        from .columns import table_feeds

        return table_feeds(X, spec.get("columns") or [])
    names = list(input_names or spec.get("input_names") or ["input"])
    X = np.asarray(X, dtype=dtype)
    if mode == "columns":
        return {name: X[:, i:i + 1] for i, name in enumerate(names)}
    return {names[0]: X}


class OnnxModel:
    """An onnxruntime session plus the spec that says what its outputs mean."""

    def __init__(self, model: Any, spec: ModelSpec, *, providers: list[str] | None = None,
                 threads: int | None = None, session=None):
        self.spec = spec
        self.session = session if session is not None else make_session(
            model, providers=providers, threads=threads)
        self.task = spec["task"]
        self.input_mode = spec.get("input_mode", "tensor")
        self.input_names = list(spec.get("input_names") or [self.session.get_inputs()[0].name])
        self.n_features = int(spec["n_features"])
        outs = spec.get("outputs") or {}
        available = [o.name for o in self.session.get_outputs()]
        if self.task == "classifier":
            self._label_out = outs.get("label") if outs.get("label") in available else None
            self._proba_out = outs.get("probabilities") or available[-1]
            self._out_names = [n for n in (self._label_out, self._proba_out) if n]
        else:
            self._value_out = outs.get("value") or available[0]
            self._out_names = [self._value_out]
        self.classes = spec.get("classes")
        self._classes_arr = np.asarray(self.classes) if self.classes is not None else None
        # class_names over a graph that outputs labels: graph label -> the user's name
        values = spec.get("class_values")
        self._label_names = (dict(zip(values, self.classes))
                             if values is not None and self.classes is not None else None)
        self.postprocess = spec.get("postprocess", "none")
        self.columns = spec.get("columns") or []
        in_type = self.session.get_inputs()[0].type
        self._in_dtype = np.float16 if "float16" in in_type else (
            np.float64 if "double" in in_type else np.float32)
        self.text = None
        if self.input_mode == "text":   # issue 21: strings tokenized in runtime/text.py
            from .text import TextEncoder

            self.text = TextEncoder(spec, model)

    @property
    def providers(self) -> list[str]:
        """Execution providers onnxruntime actually assigned to this session."""
        return list(self.session.get_providers())

    def feeds(self, X: np.ndarray) -> dict:
        """The graph's inputs for the batch ``X`` (see :func:`make_feeds`)."""
        return make_feeds(X, self.spec, dtype=self._in_dtype, input_names=self.input_names,
                          text=self.text)

    def run(self, X: np.ndarray) -> dict:
        """Return numpy arrays: ``{"label", "probabilities"}`` or ``{"value"}``."""
        dropped = None
        if self.text is not None:
            feeds, dropped, _ = self.text.encode(X)
        else:
            feeds = self.feeds(X)
        raw = self.session.run(self._out_names, feeds)
        if self.task == "classifier":
            proba = np.asarray(raw[-1], dtype=np.float64)
            if proba.ndim == 1:
                proba = proba.reshape(-1, 1)
            if self.postprocess == "softmax":
                proba = _softmax(proba)
            elif self.postprocess == "sigmoid":
                p = 1.0 / (1.0 + np.exp(-proba[:, 0]))
                proba = np.stack([1 - p, p], axis=1)
            if proba.shape[1] == 1:  # single-column positive-class probability
                proba = np.concatenate([1 - proba, proba], axis=1)
            if self._label_out is not None:
                label = np.asarray(raw[0]).reshape(-1)
                if self._label_names is not None:
                    label = np.asarray([self._label_names.get(v.item() if hasattr(v, "item") else v, v)
                                        for v in label], dtype=object)
            else:
                idx = proba.argmax(axis=1)
                label = self._classes_arr[idx] if self._classes_arr is not None else idx
            if dropped is not None:
                return {"label": label, "probabilities": proba, "tokens_dropped": dropped}
            return {"label": label, "probabilities": proba}
        value = np.asarray(raw[0], dtype=np.float64)
        if value.ndim == 2 and value.shape[1] == 1:
            value = value[:, 0]
        return {"value": value}

    def output_matrix(self, X: np.ndarray) -> np.ndarray:
        """A float matrix for explainers and verification: probabilities or values [N, k]."""
        out = self.run(X)
        if self.task == "classifier":
            return out["probabilities"]
        v = out["value"]
        return v.reshape(len(v), -1)

    def predict(self, X: np.ndarray) -> dict:
        """JSON-ready prediction body."""
        return self.to_json(self.run(X))

    def to_json(self, out: dict) -> dict:
        """Turn :meth:`run`'s arrays into the response body."""
        if self.task == "classifier":
            body = {"predictions": out["label"].tolist(),
                    "probabilities": np.round(out["probabilities"], 7).tolist()}
            if "tokens_dropped" in out:
                from .text import truncation_json

                body["truncation"] = truncation_json(out["tokens_dropped"], self.text.max_length)
            return body
        return {"predictions": out["value"].tolist()}
