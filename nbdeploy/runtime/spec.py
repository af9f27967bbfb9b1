"""The model spec: how the runtime feeds an ONNX graph and reads its outputs.

The spec is a plain JSON object.  :func:`nbdeploy.convert.convert` builds it (each adapter
contributes ``task``, ``input_mode``, ``input_names``, ``classes``, ``outputs`` and
``postprocess``; ``convert`` adds the rest), the pipeline may add ``preprocess``, and the
bundle stores it as ``model/spec.json``, where ``runtime/model.py`` (:class:`OnnxModel`),
``runtime/app.py`` and the request parsers read it.  This module is its one definition; the
types below are for readers and type checkers only (nothing validates a spec against them at
run time, and unknown keys are ignored).

Keys, with the input modes that use them (``tensor``, ``columns``, ``table``, ``text``):

``task`` (all, required)
    ``"classifier"`` or ``"regressor"``.
``input_mode`` (all; default ``"tensor"``)
    How a batch becomes the graph's inputs (:func:`runtime.model.make_feeds`):
    ``"tensor"``: one float tensor [N, n_features] (N-D models: flat rows, see ``input_shape``);
    ``"columns"``: one [N, 1] float tensor per graph input, in ``input_names`` order;
    ``"table"``: models fit on pandas DataFrames with string/categorical/text columns or missing
    values: one typed [N, 1] tensor per column (``columns[i]["onnx_input"]``/``["onnx_type"]``);
    ``"text"``: strings tokenized in the bundle (``text``) into int64 ``input_ids`` etc.
``input_names`` (all)
    The graph inputs fed, in order (tensor: one name; columns: one per feature; table: the
    inputs the columns feed; text: ``input_ids``, ``attention_mask`` (, ``token_type_ids``)).
    Default: the graph's first input.
``n_features`` (all, required)
    Columns of a 2-D batch: features (tensor/columns), DataFrame columns (table), the flat
    width ``prod(input_shape[1:])`` (N-D tensors), 1 (text).
``dtype`` (all)
    The batch's declared dtype: ``"float32"`` (tensor, columns, and table, whose batch is
    really an object array, see ``columns``) or ``"object"`` (text).  The graph's own input type
    (float, double, float16) is read from the session, not from here.
``feature_names`` (all)
    One name per batch column (``["text"]`` for text models).
``columns`` (all; ``[]`` for text)
    The column schema, one :class:`Column` per batch column, in the model's order.  Table mode
    feeds the graph from it; in every mode request validation, explanations and drift read it.
``classes`` (classifiers)
    Class labels in the order of the probability columns, or None (then labels are indices).
    With ``deploy(class_names=...)`` these are the user's names.
``class_values`` (classifiers given ``class_names`` whose graph outputs labels)
    The labels the graph's label output gives, in the order of ``classes``: the served label
    is the name at the position of the graph's label.
``outputs`` (all)
    Graph output names: ``{"label": ..., "probabilities": ...}`` for classifiers (``label``
    optional: without it the label is the argmax of the probabilities), ``{"value": ...}`` for
    regressors.  Missing names default to the graph's last (classifier) or first output.
``postprocess`` (all; default ``"none"``)
    Applied to a classifier's probability output: ``"none"``, ``"softmax"`` (logits) or
    ``"sigmoid"`` (one logit column for the positive class).
``input_shape``, ``layout`` (tensor mode, rank > 2 only)
    ``[None, *shape]``: the model's N-D input with a dynamic batch; the graph takes flat rows
    [N, prod(shape)] and reshapes them itself.  ``layout`` names the axes: ``"NCHW"``,
    ``"NHWC"``, ``"NTF"`` (sequences), or ``"N???"`` when unknown.
``preprocess`` (tensor mode with ``input_shape``, optional)
    Image preprocessing applied in the bundle to ``{"images": [...]}`` and file uploads
    (:class:`ImagePreprocess`).  Absent: the model takes numeric arrays only.
``text`` (text mode)
    The tokenizer and its settings (:class:`TextSpec`).

A batch, in the notebook and in the bundle, is a 2-D numpy array [N, n_features]: float32 for
tensor/columns models, *object* for table models (numeric/boolean cells are floats with NaN for
missing, categorical/text cells ``str`` or None) and for text models (one ``str`` per row).
Column helpers shared by validation, explain and drift live in ``runtime/columns.py``; the
core-side schema (``ColumnSpec``, ``infer_columns``) in ``nbdeploy/schema.py``.
"""

from __future__ import annotations

from typing import Literal, TypedDict

Task = Literal["classifier", "regressor"]
InputMode = Literal["tensor", "columns", "table", "text"]
Postprocess = Literal["none", "softmax", "sigmoid"]


class Column(TypedDict, total=False):
    """One batch column (``nbdeploy.schema.ColumnSpec.to_dict()``)."""

    name: str
    kind: Literal["numeric", "categorical", "text", "boolean"]
    dtype: str                     # the sample's pandas/numpy dtype, e.g. "float64", "category"
    nullable: bool                 # missing values accepted (the native model and the graph agree)
    categories: list[str] | None   # categorical: the values the model knows
    onnx_input: str | None         # table mode: the graph input this column feeds (None: unused)
    onnx_type: Literal["float", "double", "int64", "string", "bool"]
    accepts_unseen: bool | None    # categorical: an unseen value is answered (else a 400)
    missing_in_sample: int         # rows of the sample with this column missing


class Outputs(TypedDict, total=False):
    """Graph output names."""

    label: str            # classifiers, optional
    probabilities: str    # classifiers
    value: str            # regressors


class ImagePreprocess(TypedDict, total=False):
    """``nbdeploy.images.ImagePreprocess.to_dict()``: how the bundle turns an image into a row."""

    kind: Literal["image"]
    size: list[int]               # [h, w] after resizing
    crop: list[int] | None        # [h, w] centre crop, or None
    mean: list[float]             # per channel, after scaling to [0, 1]
    std: list[float]
    layout: Literal["NCHW", "NHWC"]
    mode: Literal["L", "RGB"]
    resample: str                 # resampling filter, e.g. "bilinear"
    max_pixels: int               # decoded pixels allowed per image (decompression bombs)


class TextSpec(TypedDict, total=False):
    """The tokenizer of a text model (``runtime/text.py``)."""

    tokenizer_file: str           # in the bundle: model/<tokenizer_file>
    tokenizer_json: str           # in memory only (the notebook); written out as tokenizer_file
    max_length: int
    truncation_side: Literal["right", "left"]
    pad_id: int
    pad_token: str
    mask_token: str | None        # for explanations that mask tokens


class _Required(TypedDict):
    task: Task
    n_features: int


class ModelSpec(_Required, total=False):
    """The spec as a whole (see the module docstring for each key's meaning and modes)."""

    input_mode: InputMode
    input_names: list[str]
    dtype: Literal["float32", "object"]
    feature_names: list[str] | None
    columns: list[Column]
    classes: list | None
    class_values: list
    outputs: Outputs
    postprocess: Postprocess
    input_shape: list[int | None]
    layout: str
    preprocess: ImagePreprocess
    text: TextSpec


__all__ = ["ModelSpec", "Column", "Outputs", "ImagePreprocess", "TextSpec", "Task", "InputMode",
           "Postprocess"]
