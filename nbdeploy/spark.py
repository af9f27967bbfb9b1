"""Batch scoring on Spark with a bundle: a pandas UDF and a ``mapInPandas`` scorer.

::

    import nbdeploy.spark

    predict = nbdeploy.spark.predict_udf(spark, "churn")             # prediction only
    df = df.withColumn("prediction", predict(*feature_columns))

    scored = nbdeploy.spark.score(df, "churn", explain=True)         # every column of df, plus
    # prediction, proba_<class>..., shap_<column>..., shap_base, shap_output

How the model travels: the driver reads the bundle's chosen ONNX variant, its ``spec.json``
and ``config.json`` (and, for explanations, the files of ``model/explain/``: JSON, ``.npy``/
``.npz``, ONNX) as **bytes** and broadcasts them once.  No Python model object is pickled.  On
each executor's Python worker the bytes are written to a private temporary folder and loaded by
:class:`nbdeploy.scoring.Scorer` (the runtime code the served bundle runs, with the served API's
validation) the first time a task needs them; the onnxruntime session is then kept in the
worker process and reused by every later batch and task (Spark reuses Python workers by
default, ``spark.python.worker.reuse``).

What an executor needs installed: Python with ``nbdeploy`` importable (``pip install --no-deps
nbdeploy`` is enough: executors import only ``nbdeploy.spark``, ``nbdeploy.scoring`` and
``nbdeploy.runtime``), ``numpy``, ``pandas``, ``pyarrow`` and ``onnxruntime``; plus ``shap``
for ``explain=True`` on tree models.  Neither BentoML nor the model's own framework
(scikit-learn, XGBoost, PyTorch...) is needed there.

Bad rows fail the task with the served API's message for that row (its values included), as
a bad row stops :func:`nbdeploy.score`.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, NbdeployError, missing

#: Scorers built in this (executor) process, by bundle key.  One per process, reused.
_SCORERS: dict[str, Any] = {}
_LOCK = threading.Lock()
#: How many scorers (onnxruntime sessions) this process created: tests read it.
SESSIONS_CREATED = 0


def _require_pyspark():
    try:
        import pyspark  # noqa: F401
    except ImportError as exc:
        raise missing("pyspark", "spark", "to score on Spark") from exc


# ----------------------------------------------------------------------------------------------
# driver side
# ----------------------------------------------------------------------------------------------
def bundle_payload(bundle: Any, *, explain: bool = False) -> tuple[str, str, dict[str, bytes]]:
    """``(tag, key, files)``: the bundle's model files as bytes, keyed by their path under
    ``model/``; ``key`` identifies their content."""
    from .scoring import resolve_bundle

    tag, model_dir = resolve_bundle(bundle)
    import json

    config = json.loads((model_dir / "config.json").read_text(encoding="utf-8"))
    names = ["spec.json", "config.json", config.get("model_file", "model.onnx")]
    if explain:
        folder = model_dir / "explain"
        if not folder.is_dir():
            raise NbdeployError(f"explain=True needs a bundle built with SHAP; {tag} has no "
                                "explanations.",
                                hint="Rebuild with nbdeploy.deploy(..., explain='shap').")
        names += [f"explain/{p.name}" for p in sorted(folder.iterdir()) if p.is_file()]
    files = {n: (model_dir / n).read_bytes() for n in names}
    h = hashlib.sha256()
    for n in names:
        h.update(n.encode() + b"\0" + hashlib.sha256(files[n]).digest())
    return tag, h.hexdigest()[:24], files


class _Shipped:
    """What the UDF closure carries: the broadcast handle, the key, and the schema facts."""

    def __init__(self, spark: Any, bundle: Any, *, explain: bool, threads: int | None):
        _require_pyspark()
        from .scoring import Scorer

        self.tag, self.key, files = bundle_payload(bundle, explain=explain)
        self.explain = explain
        with tempfile.TemporaryDirectory(prefix="nbdeploy-spark-driver-") as tmp:
            local = _materialise(Path(tmp), files)
            scorer = Scorer(local)             # on the driver: output columns and feature names
            self.columns = scorer.output_columns(explain=explain)
            self.feature_names = scorer.feature_names
            self.names = scorer.names
            self.task = scorer.task
            self.classes = scorer.classes
        if threads is None:
            try:
                threads = int(spark.conf.get("spark.task.cpus", "1"))
            except Exception:
                threads = 1
        self.threads = threads
        self.broadcast = spark.sparkContext.broadcast(files)

    def fields(self) -> list:
        from pyspark.sql import types as T

        out = []
        for c in self.columns:
            if c == "prediction":
                out.append(T.StructField(c, _prediction_type(self.task, self.classes), True))
            elif c == "shap_output":
                out.append(T.StructField(c, T.StringType(), True))
            else:
                out.append(T.StructField(c, T.DoubleType(), True))
        return out


def _prediction_type(task: str, classes: list | None):
    from pyspark.sql import types as T

    if task != "classifier":
        return T.DoubleType()
    if classes and all(isinstance(c, bool) for c in classes):
        return T.BooleanType()
    if classes and all(isinstance(c, int) and not isinstance(c, bool) for c in classes):
        return T.LongType()
    if classes and all(isinstance(c, (int, float)) and not isinstance(c, bool) for c in classes):
        return T.DoubleType()
    return T.StringType()


def predict_udf(spark: Any, bundle: Any, *, probabilities: bool = False, explain: bool = False,
                threads: int | None = None):
    """A pandas UDF scoring the model's input columns, given in training order.

    ``udf(*cols)`` returns the prediction; with ``probabilities=True`` or ``explain=True`` a
    struct with ``prediction``, ``proba_<class>`` (classifiers) and, with ``explain``,
    ``shap_<column>``, ``shap_base``, ``shap_output`` (select fields with ``col.prediction``).
    ``threads``: onnxruntime threads per task (default ``spark.task.cpus``).
    """
    from pyspark.sql import types as T
    from pyspark.sql.functions import pandas_udf

    shipped = _Shipped(spark, bundle, explain=explain, threads=threads)
    whole = probabilities or explain
    rtype = T.StructType(shipped.fields()) if whole else _prediction_type(shipped.task, shipped.classes)
    names = shipped.feature_names

    def run(*cols):
        import pandas as pd

        if len(cols) != len(names):
            raise InvalidInputError(f"The UDF of {shipped.tag} takes {len(names)} columns "
                                    f"{names[:10]}; got {len(cols)}.",
                                    hint="Call it with the model's columns in training order: "
                                         "udf(*[df[c] for c in names]).",
                                    expected=len(names), received=len(cols))
        frame = pd.concat([c.reset_index(drop=True) for c in cols], axis=1)
        frame.columns = names
        out = _score_batch(shipped, frame)
        return out if whole else out["prediction"]

    run.__name__ = f"nbdeploy_{shipped.tag.split(':')[0].replace('-', '_').replace('.', '_')}"
    return pandas_udf(run, returnType=rtype)


def explain_udf(spark: Any, bundle: Any, *, threads: int | None = None):
    """:func:`predict_udf` with SHAP contributions: a struct column (see there)."""
    return predict_udf(spark, bundle, explain=True, threads=threads)


def score(df: Any, bundle: Any, *, explain: bool = False, threads: int | None = None):
    """``df`` with the bundle's output columns appended, through ``df.mapInPandas``.

    ``df`` must hold the model's columns by name (other columns pass through).  The output
    columns are those of :func:`nbdeploy.score`: ``prediction``, ``proba_<class>`` and, with
    ``explain=True``, ``shap_<column>``, ``shap_base``, ``shap_output``.
    """
    _require_pyspark()
    from pyspark.sql import types as T

    shipped = _Shipped(df.sparkSession, bundle, explain=explain, threads=threads)
    have = set(df.columns)
    if shipped.names:
        lacking = [n for n in shipped.names if n not in have]
        if lacking:
            raise InvalidInputError(f"The Spark DataFrame lacks {len(lacking)} of the model's "
                                    f"columns (first: {', '.join(map(repr, lacking[:5]))}).",
                                    hint="Select or rename columns to the model's names "
                                         "(`nbdeploy report TAG --columns`).",
                                    expected=shipped.names[:50], received=df.columns[:50])
    clash = [c for c in shipped.columns if c in have]
    if clash:
        raise InvalidInputError(f"The Spark DataFrame already has output column(s) {clash[:5]}.",
                                hint="Drop or rename them first.", received=clash[:5])
    schema = T.StructType(list(df.schema.fields) + shipped.fields())

    def run(batches):
        import pandas as pd

        for pdf in batches:
            out = _score_batch(shipped, pdf)
            out.index = pdf.index
            yield pd.concat([pdf, out], axis=1)

    return df.mapInPandas(run, schema)


# ----------------------------------------------------------------------------------------------
# executor side
# ----------------------------------------------------------------------------------------------
def _materialise(folder: Path, files: dict[str, bytes]) -> Path:
    for name, data in files.items():
        p = folder / name
        if p.resolve().parent not in (folder.resolve(), (folder / "explain").resolve()):
            raise NbdeployError(f"Refusing a bundle file name {name!r}.")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    return folder


def executor_scorer(key: str, broadcast: Any, threads: int | None = None):
    """This process's scorer for bundle ``key``: built from the broadcast bytes once, reused."""
    global SESSIONS_CREATED
    scorer = _SCORERS.get(key)
    if scorer is None:
        with _LOCK:
            scorer = _SCORERS.get(key)
            if scorer is None:
                from .scoring import Scorer

                folder = Path(tempfile.mkdtemp(prefix=f"nbdeploy-spark-{os.getpid()}-"))
                scorer = Scorer(_materialise(folder, broadcast.value), threads=threads)
                _SCORERS[key] = scorer
                SESSIONS_CREATED += 1
    return scorer


def _score_batch(shipped: _Shipped, frame: Any):
    scorer = executor_scorer(shipped.key, shipped.broadcast, shipped.threads)
    try:
        out, _, _ = scorer.score_frame(frame, explain=shipped.explain)
    except InvalidInputError as exc:
        row = getattr(exc, "row", None)
        values = {}
        if row is not None and row < len(frame):
            values = {k: frame.iloc[row][k] for k in list(scorer.feature_names)[:30]
                      if k in frame.columns}
        raise InvalidInputError(f"{exc.message} (bundle {shipped.tag}; the row of this Arrow batch "
                                f"has {str(values)[:600]})", hint=exc.hint, expected=exc.expected,
                                received=exc.received) from None
    out = out.reset_index(drop=True)
    if "prediction" in out and shipped.task == "classifier" and \
            str(_prediction_type(shipped.task, shipped.classes)) == "StringType()":
        out["prediction"] = out["prediction"].astype(str)
    return out
