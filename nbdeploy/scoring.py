"""Batch scoring (``nbdeploy.score``; the module is not named ``score`` so that importing it
cannot shadow the function on the package): a DataFrame, an array or a file (Parquet, CSV, JSON lines) scored with a bundle.

``nbdeploy.score(bundle, data)`` runs the bundle's chosen ONNX variant (``model/model.onnx``
with its ``spec.json``) through the same runtime code the served bundle uses
(:mod:`nbdeploy.runtime`), and validates every row with the same rules as ``POST /predict``
(:mod:`nbdeploy.runtime.validation`): the same checks, the same messages, with the row
number in the whole input instead of the request.

Bad rows
--------
By default the run **stops at the first bad row**: :class:`~nbdeploy.errors.InvalidInputError`
names its row number (0-based, counted over the whole input), the column, what was expected
and what was received, and nothing is written to ``output``.  With ``rejects=PATH`` the run
goes on instead: every bad row goes to ``PATH`` (JSON lines: ``row``, ``column``, ``message``,
``hint``, ``values``), the good rows are scored, and the output gets a ``row`` column so that
scored rows can be joined back to the input.

Memory
------
Files are read in chunks of ``batch_size`` rows (pyarrow datasets for Parquet and CSV, a
line reader for JSON lines) and written chunk by chunk, so memory is bounded by the chunk,
not the file.  A returned DataFrame (no ``output``) is, of course, as large as the result.
"""

from __future__ import annotations

import json
import math
import os
import re
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import InvalidInputError, NbdeployError, NotFoundError, missing

DEFAULT_BATCH_SIZE = 20_000
#: File suffixes read as each format (a folder is read as the format of its files).
FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "json",
           ".ndjson": "json", ".json": "json"}
OUTPUT_FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv"}
ARCHIVE_SUFFIXES = (".bento", ".tar.gz", ".tgz", ".tar")
PREDICTION = "prediction"
PROBA_PREFIX = "proba_"
SHAP_PREFIX = "shap_"
SHAP_BASE = "shap_base"
SHAP_OUTPUT = "shap_output"
ROW = "row"
F32_MAX = 3.4028234663852886e38


# ----------------------------------------------------------------------------------------------
# the bundle
# ----------------------------------------------------------------------------------------------
def resolve_bundle(bundle: Any) -> tuple[str, Path]:
    """``(tag, model_dir)`` for a tag, a Deployment or a bundle archive (imported first)."""
    from .schema import validate_tag

    if hasattr(bundle, "chosen_spec") and hasattr(bundle, "tag"):   # a Deployment
        if not bundle.tag:
            raise NbdeployError("This deployment has no bundle yet.",
                                hint="Run the pipeline first: nbdeploy.deploy(model, sample).")
        return bundle.tag, Path(bundle.path) / "src" / "model"
    if isinstance(bundle, os.PathLike) or (isinstance(bundle, str) and (
            bundle.endswith(ARCHIVE_SUFFIXES) or os.sep in bundle)):
        path = Path(os.fspath(bundle)).expanduser()
        if not path.is_file():
            raise NotFoundError(f"No bundle archive at {str(path)[:200]}.",
                                hint="Pass a bundle tag (NAME or NAME:VERSION), a Deployment, or "
                                     "an archive written by `nbdeploy export`.")
        bundle = _import_archive(path)
    if not isinstance(bundle, str):
        raise InvalidInputError(f"bundle must be a tag, a Deployment or an archive path; got "
                                f"{type(bundle).__name__}.",
                                hint="e.g. nbdeploy.score('churn', df) or nbdeploy.score(d, df).",
                                expected="tag | Deployment | archive path",
                                received=type(bundle).__name__)
    validate_tag(bundle)
    from .store import get

    bento = get(bundle)
    return str(bento.tag), Path(bento.path) / "src" / "model"


def _import_archive(path: Path) -> str:
    """Import an archive (checked by :func:`nbdeploy.archive.import_bundle`); an archive whose
    tag is already in the store is scored with the stored bundle of that tag."""
    from .archive import import_bundle

    try:
        return import_bundle(path)
    except InvalidInputError as exc:
        m = re.match(r"^(\S+) is already in the BentoML store\.$", exc.message)
        if m:
            return m.group(1)
        raise


class Scorer:
    """A bundle's model, spec and (on demand) explainer, ready to score validated chunks.

    Built from a bundle's ``model/`` folder; used by :func:`score` and on Spark executors.
    """

    def __init__(self, model_dir: str | os.PathLike, *, threads: int | None = None):
        from .runtime.model import OnnxModel

        self.model_dir = Path(model_dir)
        try:
            self.spec = json.loads((self.model_dir / "spec.json").read_text(encoding="utf-8"))
            self.config = json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise NbdeployError(f"The bundle at {self.model_dir} has no readable spec.json/"
                                f"config.json: {exc}.", hint="Rebuild the bundle.") from exc
        self.table = self.spec.get("input_mode") == "table"
        self.columns = self.spec.get("columns") or []
        self.names = ([c["name"] for c in self.columns] if self.table
                      else list(self.spec.get("feature_names") or []))
        self.n_features = int(self.spec["n_features"])
        path = self.model_dir / self.config.get("model_file", "model.onnx")
        self.model = OnnxModel(path, self.spec, session=_batch_session(path, self.config, threads))
        self.task = self.spec["task"]
        self.classes = self.spec.get("classes")
        self._explainer = None

    # -- schema ------------------------------------------------------------------------------
    def output_columns(self, *, explain: bool = False) -> list[str]:
        cols = [PREDICTION]
        if self.task == "classifier":
            cols += [f"{PROBA_PREFIX}{c}" for c in self.classes or range(self._n_outputs())]
        if explain:
            cols += [f"{SHAP_PREFIX}{n}" for n in self.feature_names] + [SHAP_BASE, SHAP_OUTPUT]
        return cols

    @property
    def feature_names(self) -> list[str]:
        return self.names or [f"f{i}" for i in range(self.n_features)]

    def _n_outputs(self) -> int:
        return int(self.model.output_matrix(self._zeros()).shape[1])

    def _zeros(self):
        import numpy as np

        return np.zeros((1, self.n_features), dtype=np.float32)

    # -- validation ----------------------------------------------------------------------------
    def select(self, frame: Any) -> Any:
        """The model's columns of a DataFrame chunk, in model order (extra columns ignored)."""
        have = [str(c) for c in frame.columns]
        if self.names and set(self.names) <= set(have):
            if have != list(frame.columns):
                frame = frame.set_axis(have, axis=1)
            return frame[self.names]
        positional = not self.names or all(not isinstance(c, str) for c in frame.columns)
        if positional and frame.shape[1] == self.n_features:
            return frame.set_axis(self.feature_names, axis=1)
        if self.names:
            missing = [n for n in self.names if n not in set(have)]
            raise InvalidInputError(
                f"The input lacks {len(missing)} of the model's {len(self.names)} columns "
                f"(first: {', '.join(map(repr, missing[:5]))}).",
                hint="Give the input the columns the model was trained on (see `nbdeploy report "
                     "TAG --columns`); other columns are ignored.",
                expected=self.names[:50], received=have[:50])
        raise InvalidInputError(f"Each row must have {self.n_features} features; got {frame.shape[1]}.",
                                hint="Pass rows with the columns the model was trained on, in order.",
                                expected=self.n_features, received=int(frame.shape[1]))

    def validate(self, frame: Any, *, start: int = 0, collect: bool = False
                 ) -> tuple[Any, Any, list[dict]]:
        """``(X, good_positions, rejects)`` for a DataFrame chunk whose first row is row ``start``.

        Each bad row is checked by the served API's own validation (``parse_rows`` /
        ``parse_table``), whose message names it; without ``collect`` the first one raises.
        """
        import numpy as np

        feats = self.select(frame)
        if self.table:
            rows = _table_rows(feats, self.columns)
            X, bad = self._check_table(rows)
        else:
            X, bad = self._check_numeric(feats)
        if not bad:
            return X, np.arange(len(feats)), []
        rejects: list[dict] = []
        good = np.ones(len(feats), dtype=bool)
        for i in bad:
            row = _row_values(feats, i) if not self.table else rows[i]
            err = self._row_error(row)
            if err is None:             # the served validation accepts it: so do we
                continue
            info = _reject(err, start + i, dict(zip(self.feature_names, row)), self.feature_names)
            if not collect:
                e = InvalidInputError(info["message"], hint=err.hint, expected=err.expected,
                                      received=err.received)
                e.row, e.column = start + i, info["column"]   # type: ignore[attr-defined]
                raise e
            rejects.append(info)
            good[i] = False
        keep = np.where(good)[0]
        if self.table:
            from .runtime.validation import parse_table

            X = parse_table([rows[i] for i in keep], self.columns) if len(keep) else None
        else:
            X = _numeric_fix(feats, keep, self)
        return X, keep, rejects

    def _check_numeric(self, feats: Any) -> tuple[Any, list[int]]:
        import numpy as np

        n = len(feats)
        bad = np.zeros(n, dtype=bool)
        nullable = [bool(c.get("nullable")) for c in self.columns] if \
            len(self.columns) == feats.shape[1] else [False] * feats.shape[1]
        if all(getattr(t, "kind", "O") in "iuf" for t in feats.dtypes):   # all numbers: one copy
            M = feats.to_numpy(dtype=np.float64, na_value=np.nan)
            if np.isfinite(M).all() and not (np.abs(M) > F32_MAX).any():
                return M.astype(np.float32), []
        else:
            M = np.empty((n, feats.shape[1]), dtype=np.float64)
            for j, (_, s) in enumerate(feats.items()):
                col, ok = _numeric_column(s)
                bad |= ~ok
                M[:, j] = col
        with np.errstate(invalid="ignore"):
            finite = np.isfinite(M)
            nan_ok = np.isnan(M) & np.asarray(nullable, dtype=bool)[None, :]
            bad |= ~(finite | nan_ok).all(axis=1)
            bad |= (np.abs(np.where(finite, M, 0.0)) > F32_MAX).any(axis=1)
        return M.astype(np.float32), [int(i) for i in np.where(bad)[0]]

    def _check_table(self, rows: list) -> tuple[Any, list[int]]:
        from .runtime.validation import ClientError, parse_table

        try:
            return parse_table(rows, self.columns), []
        except ClientError:
            pass
        bad = []
        for i, r in enumerate(rows):
            try:
                parse_table([r], self.columns)
            except ClientError:
                bad.append(i)
        return None, bad

    def _row_error(self, row: list):
        """The served API's ClientError for one row (as the request ``{"inputs": [row]}``)."""
        from .runtime.validation import ClientError, parse_rows

        try:
            parse_rows({"inputs": [row]}, n_features=self.n_features,
                       feature_names=self.spec.get("feature_names"), max_rows=1, spec=self.spec)
        except ClientError as exc:
            return exc
        return None

    # -- scoring -----------------------------------------------------------------------------
    def predict(self, X: Any) -> dict:
        """Output columns (numpy arrays) for validated rows ``X``."""
        out = self.model.run(X)
        if self.task == "classifier":
            cols = {PREDICTION: out["label"]}
            P = out["probabilities"]
            names = self.output_columns()[1:]
            for k, name in enumerate(names):
                cols[name] = P[:, k]
            return cols
        return {PREDICTION: out["value"]}

    @property
    def explainer(self):
        if self._explainer is None:
            from .runtime.explain import ServeExplainer
            from .runtime.validation import ClientError

            try:
                self._explainer = ServeExplainer.from_bundle(self.model_dir, self.model, self.config)
            except ClientError as exc:
                raise NbdeployError(f"explain=True needs a bundle built with SHAP: {exc.message}",
                                    hint="Rebuild with nbdeploy.deploy(..., explain='shap').") from exc
            if "shap" not in self._explainer.methods:
                raise NbdeployError("explain=True needs a bundle built with SHAP; this one has "
                                    f"{self._explainer.methods}.",
                                    hint="Rebuild with nbdeploy.deploy(..., explain='shap').")
        return self._explainer

    def explain(self, X: Any) -> dict:
        """SHAP columns for validated rows: one per feature (column in table mode) for the output
        the served ``/explain`` explains by default (``output="auto"``), plus base and output name."""
        import numpy as np

        ex = self.explainer
        step = max(1, int(ex._row_limit("shap")))
        phis, bases, names = [], [], []
        for lo in range(0, len(X), step):
            phi, base, outputs, _ = ex.shap_values(X[lo:lo + step])
            idx = np.asarray(ex.choose_outputs(outputs, "auto"))
            rows = np.arange(len(idx))
            phis.append(phi[rows, :, idx])
            bases.append(np.asarray(base)[idx])
            names.extend(ex.output_names[i] for i in idx)
        phi = np.concatenate(phis) if phis else np.zeros((0, len(self.feature_names)))
        cols = {f"{SHAP_PREFIX}{n}": phi[:, j] for j, n in enumerate(self.feature_names)}
        cols[SHAP_BASE] = np.concatenate(bases) if bases else np.zeros(0)
        cols[SHAP_OUTPUT] = np.asarray(names, dtype=object)
        return cols

    def score_frame(self, frame: Any, *, start: int = 0, explain: bool = False,
                    collect: bool = False, index: Any = None) -> tuple[Any, list[dict], Any]:
        """One chunk in, ``(scored DataFrame, rejects, positions of the scored rows)`` out."""
        import pandas as pd

        X, keep, rejects = self.validate(frame, start=start, collect=collect)
        idx = (index if index is not None else pd.RangeIndex(start, start + len(frame)))[keep]
        if X is None or len(keep) == 0:
            return pd.DataFrame({c: [] for c in self.output_columns(explain=explain)},
                                index=idx), rejects, keep
        cols = self.predict(X)
        if explain:
            cols.update(self.explain(X))
        return pd.DataFrame(cols, index=idx), rejects, keep


def _batch_session(path: Path, config: dict, threads: int | None):
    """An onnxruntime session for large batches: its threads sleep instead of spinning between
    runs.  On a busy machine spinning threads cost a forest 2-3x its throughput (measured here:
    56k rows/s spinning vs 104-136k not, next to scikit-learn's 186k, under a load of 8 on 2
    cores); for batches of thousands of rows there is nothing to gain from spinning."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads:
        opts.intra_op_num_threads = int(threads)
    opts.inter_op_num_threads = 1
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=opts, providers=_providers(config))


def _providers(config: dict) -> list[str]:
    import onnxruntime as ort

    have = set(ort.get_available_providers())
    wanted = [p for p in (config.get("providers") or ["CPUExecutionProvider"]) if p in have]
    return wanted or ["CPUExecutionProvider"]


# ----------------------------------------------------------------------------------------------
# cells
# ----------------------------------------------------------------------------------------------
def _numeric_column(s: Any) -> tuple[Any, Any]:
    """``(float64 values, ok mask)``: numbers (NaN = missing) pass; booleans, strings and other
    objects do not (the served API refuses them too)."""
    import numpy as np
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    n = len(s)
    if is_numeric_dtype(s.dtype) and not is_bool_dtype(s.dtype):
        return s.to_numpy(dtype=np.float64, na_value=np.nan), np.ones(n, dtype=bool)
    vals = s.to_numpy(dtype=object)
    out = np.full(n, np.nan)
    ok = np.zeros(n, dtype=bool)
    for i, v in enumerate(vals):
        if v is None or (isinstance(v, float) and v != v) or _is_na(v):
            ok[i] = True
        elif isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_)):
            out[i], ok[i] = float(v), True
    return out, ok


def _is_na(v: Any) -> bool:
    try:
        import pandas as pd

        return v is pd.NA or v is pd.NaT
    except ImportError:  # pragma: no cover
        return False


def _py(v: Any) -> Any:
    """A cell as the JSON value a client would send: None for missing, Python scalars."""
    if v is None or _is_na(v):
        return None
    if hasattr(v, "item") and not isinstance(v, (str, bytes)):
        try:
            v = v.item()
        except (ValueError, TypeError):
            return v
    if isinstance(v, float) and v != v:
        return None
    return v


def _row_values(feats: Any, i: int) -> list:
    return [_py(v) for v in feats.iloc[i].tolist()] if feats.shape[1] else []


def _table_rows(feats: Any, columns: list[dict]) -> list[list]:
    """A chunk as rows of JSON-like cells in column order (what ``/predict`` would receive)."""
    import numpy as np
    from pandas.api.types import is_bool_dtype, is_numeric_dtype

    by_col = []
    for (_, s), _col in zip(feats.items(), columns):
        if is_numeric_dtype(s.dtype) and not is_bool_dtype(s.dtype):
            v = s.to_numpy(dtype=np.float64, na_value=np.nan).tolist()
            by_col.append([None if x != x else x for x in v])
        else:
            by_col.append([_py(x) for x in s.tolist()])
    return [list(r) for r in zip(*by_col)] if by_col else [[] for _ in range(len(feats))]


def _numeric_fix(feats: Any, keep: Any, scorer: Scorer) -> Any:
    X, _ = scorer._check_numeric(feats.iloc[keep])
    return X


def _reject(err: Any, row: int, values: dict, names: list[str]) -> dict:
    """The served API's error for the one-row request, renumbered to the row in the input."""
    msg = re.sub(r"\b([Rr])ow 0\b", lambda m: f"{m.group(1)}ow {row}", err.message)
    if not re.search(rf"\b[Rr]ow {row}\b", msg):
        msg = f"Row {row}: {msg}"
    column = err.column
    m = re.search(r"\bcolumn (\d+)\b", msg)
    if column is None and m and int(m.group(1)) < len(names):
        column = names[int(m.group(1))]
        msg = msg.replace(m.group(0), f"column {m.group(1)} ({column!r})", 1)
    elif column is None:      # e.g. "Rows must contain only numbers.": name the first bad cell
        for name, v in values.items():
            if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
                column = name
                what = "null (a missing value)" if v is None else repr(_json_safe(v))
                msg = f"{msg.rstrip('.')} (column {name!r} has {what})."
                break
    return {"row": int(row), "column": column, "message": msg, "hint": err.hint,
            "values": {k: _json_safe(v) for k, v in values.items()}}


def _json_safe(v: Any) -> Any:
    if isinstance(v, float) and not math.isfinite(v):
        return str(v)
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v if not isinstance(v, str) else v[:200]
    return repr(v)[:200]


# ----------------------------------------------------------------------------------------------
# reading
# ----------------------------------------------------------------------------------------------
@dataclass
class _Source:
    chunks: Iterator[tuple[int, Any, Any]]   # (first row, DataFrame chunk, index or None)
    total: int | None
    name: str


def _open_source(data: Any, scorer: Scorer, batch_size: int, keep: list[str]) -> _Source:
    import numpy as np

    from .schema import is_frame

    if is_frame(data):
        return _Source(_frame_chunks(data, batch_size), len(data), "the DataFrame")
    if isinstance(data, np.ndarray):
        if data.ndim == 1 and data.shape[0] == scorer.n_features:
            data = data.reshape(1, -1)
        if data.ndim != 2:
            raise InvalidInputError(f"An array to score must be 2-D (rows x features); got shape "
                                    f"{list(data.shape)}.", hint="Use X.reshape(1, -1) for one row.",
                                    expected="2-D", received=list(data.shape))
        import pandas as pd

        return _Source(((lo, pd.DataFrame(data[lo:lo + batch_size]), None)
                        for lo in range(0, len(data), batch_size)), len(data), "the array")
    if isinstance(data, (str, os.PathLike)):
        return _open_path(Path(os.fspath(data)).expanduser(), scorer, batch_size, keep)
    raise InvalidInputError(f"data must be a DataFrame, a numpy array or a path to Parquet, CSV or "
                            f"JSON-lines; got {type(data).__name__}.",
                            hint="e.g. nbdeploy.score(tag, 'data.parquet') or nbdeploy.score(tag, df).",
                            expected="DataFrame | ndarray | path", received=type(data).__name__)


def _frame_chunks(df: Any, batch_size: int) -> Iterator:
    for lo in range(0, len(df), batch_size):
        part = df.iloc[lo:lo + batch_size]
        yield lo, part, part.index


def _format_of(path: Path) -> tuple[str, list[Path]]:
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith((".", "_")))
        kinds = {FORMATS.get(p.suffix.lower()) for p in files} - {None}
        if len(kinds) != 1:
            raise InvalidInputError(f"The folder {path.name} must hold files of one format "
                                    f"(.parquet, .csv or .jsonl); found {sorted(kinds) or 'none'}.",
                                    hint="Point at one file, or a folder of files of one format.",
                                    expected="parquet | csv | jsonl", received=sorted(kinds))
        kind = kinds.pop()
        return kind, [p for p in files if FORMATS.get(p.suffix.lower()) == kind]
    if not path.is_file():
        raise NotFoundError(f"No input file or folder at {str(path)[:200]}.",
                            hint="Check the path; Parquet, CSV and JSON-lines files are read.")
    kind = FORMATS.get(path.suffix.lower())
    if kind is None:
        raise InvalidInputError(f"Cannot tell the format of {path.name} from its suffix.",
                                hint="Use .parquet, .csv or .jsonl.",
                                expected=sorted(FORMATS), received=path.suffix or "(none)")
    return kind, [path]


def _open_path(path: Path, scorer: Scorer, batch_size: int, keep: list[str]) -> _Source:
    kind, files = _format_of(path)
    if kind == "json":
        return _Source(_json_chunks(files, batch_size), None, path.name)
    import pyarrow as pa
    import pyarrow.dataset as ds

    try:
        if kind == "parquet":
            dataset = ds.dataset([str(f) for f in files], format="parquet")
        else:
            import pyarrow.csv as pcsv

            names = _csv_header(files[0])
            conv = pcsv.ConvertOptions(column_types={n: pa.string() for n in names},
                                       strings_can_be_null=True)
            dataset = ds.dataset([str(f) for f in files], format=ds.CsvFileFormat(convert_options=conv))
    except (pa.ArrowInvalid, OSError) as exc:
        raise InvalidInputError(f"Could not read {path.name} as {kind}: {str(exc)[:300]}.",
                                hint=f"Check that it is a valid {kind} file.") from exc
    have = dataset.schema.names
    wanted = _wanted_columns(have, scorer, keep)
    total = dataset.count_rows() if kind == "parquet" else None
    return _Source(_arrow_chunks(dataset, wanted, batch_size, kind, scorer, path.name),
                   total, path.name)


def _csv_header(path: Path) -> list[str]:
    import csv

    with open(path, newline="", encoding="utf-8") as f:
        try:
            return next(csv.reader(f))
        except StopIteration:
            raise InvalidInputError(f"{path.name} is empty.", hint="Give a CSV file with a header row.") \
                from None


def _wanted_columns(have: list[str], scorer: Scorer, keep: list[str]) -> list[str]:
    missing_keep = [k for k in keep if k not in have]
    if missing_keep:
        raise InvalidInputError(f"keep_columns names column(s) not in the input: {missing_keep[:5]}.",
                                expected=have[:50], received=missing_keep[:5])
    if scorer.names and set(scorer.names) <= set(have):
        feats = list(scorer.names)
    else:
        feats = list(have)          # positional (checked by Scorer.select)
    return feats + [k for k in keep if k not in feats]


def _arrow_chunks(dataset: Any, columns: list[str], batch_size: int, kind: str, scorer: Scorer,
                  name: str) -> Iterator:
    import pyarrow as pa

    start = 0
    numeric = _numeric_names(scorer, columns)
    try:
        for batch in dataset.to_batches(columns=columns, batch_size=batch_size):
            if batch.num_rows == 0:
                continue
            if kind == "csv":
                frame = _csv_frame(batch, numeric)
            else:
                frame = batch.to_pandas()
            yield start, frame, None
            start += batch.num_rows
    except pa.ArrowInvalid as exc:
        raise InvalidInputError(f"Could not read {name} after row {start}: {str(exc)[:300]}.",
                                hint="Check the file at that point.") from exc


def _numeric_names(scorer: Scorer, columns: list[str]) -> set[str]:
    """The file's columns that feed numeric inputs: by name, or by position when the file's
    header does not carry the model's names (e.g. a model fit on a numpy array)."""
    by_name = bool(scorer.names) and set(scorer.names) <= set(columns)
    if scorer.table:
        kinds = [c.get("kind") in ("numeric", "boolean") for c in scorer.columns]
        if by_name:
            return {c["name"] for c, k in zip(scorer.columns, kinds) if k}
        return {name for name, k in zip(columns, kinds) if k}
    return set(scorer.names) if by_name else set(columns)


def _csv_frame(batch: Any, numeric: set[str]) -> Any:
    """CSV cells arrive as text: the model's numeric columns are parsed as numbers, and a cell
    that is not a number stays text (so validation reports that cell, as /predict would)."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    data = {}
    for name, arr in zip(batch.schema.names, batch.columns):
        if name in numeric:
            try:
                data[name] = pc.cast(arr, pa.float64()).to_numpy(zero_copy_only=False)
                continue
            except pa.ArrowInvalid:
                data[name] = pd.Series([_parse_number(v) for v in arr.to_pylist()], dtype=object)
                continue
        data[name] = arr.to_pandas()
    return pd.DataFrame(data)


def _parse_number(v: Any) -> Any:
    if v is None:
        return None
    try:
        return float(v)
    except ValueError:
        low = v.strip().lower()
        return {"true": True, "false": False}.get(low, v)


def _json_chunks(files: list[Path], batch_size: int) -> Iterator:

    start, buf = 0, []
    for f in files:
        with open(f, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except ValueError as exc:
                    raise InvalidInputError(f"Row {start + len(buf)} ({f.name} line {lineno}) is not "
                                            f"valid JSON: {exc}.",
                                            hint="Write one JSON object per line.") from None
                if not isinstance(rec, dict):
                    raise InvalidInputError(f"Row {start + len(buf)} ({f.name} line {lineno}) is not "
                                            f"a JSON object but {type(rec).__name__}.",
                                            hint='Write one object per line: {"column": value, ...}.',
                                            expected="object", received=type(rec).__name__)
                buf.append(rec)
                if len(buf) >= batch_size:
                    yield start, _records_frame(buf), None
                    start, buf = start + len(buf), []
    if buf:
        yield start, _records_frame(buf), None


def _records_frame(records: list[dict]) -> Any:
    import pandas as pd

    names = list(dict.fromkeys(k for r in records for k in r))
    # object columns keep each JSON value's type (a "1.5" string stays a string, as in /predict)
    return pd.DataFrame({n: pd.Series([r.get(n) for r in records], dtype=object) for n in names})


class _Prefetch:
    """Reads the next chunk in a background thread while the current one is scored (pyarrow's
    readers and onnxruntime release the GIL); at most ``depth`` chunks wait, so memory stays
    bounded.  Errors of the reader are raised in the caller, in order."""

    _END = object()

    def __init__(self, it: Iterator, depth: int = 1):
        import queue
        import threading

        self._q: Any = queue.Queue(maxsize=depth)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(it,), name="nbdeploy-score-reader",
                                        daemon=True)
        self._thread.start()

    def _put(self, item: Any) -> bool:
        import queue

        while not self._stop.is_set():
            try:
                self._q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self, it: Iterator) -> None:
        try:
            for item in it:
                if not self._put(("item", item)):
                    return
            self._put(("end", None))
        except BaseException as exc:   # handed to the consumer
            self._put(("error", exc))

    def __iter__(self):
        while True:
            kind, value = self._q.get()
            if kind == "end":
                return
            if kind == "error":
                raise value
            yield value

    def close(self) -> None:
        self._stop.set()


# ----------------------------------------------------------------------------------------------
# writing
# ----------------------------------------------------------------------------------------------
class _Writer:
    """Writes chunks to ``<output>.partial`` and renames it over ``output`` at the end."""

    def __init__(self, path: Path, fmt: str):
        self.path, self.fmt = path, fmt
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        self.writer = None
        self.schema = None
        self.rows = 0

    def write(self, frame: Any) -> None:
        import pyarrow as pa

        table = pa.Table.from_pandas(frame, preserve_index=False)
        if self.writer is None:
            self.schema = table.schema
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                self.writer = pq.ParquetWriter(str(self.tmp), self.schema)
            else:
                import pyarrow.csv as pcsv

                self.writer = pcsv.CSVWriter(str(self.tmp), self.schema)
        elif table.schema != self.schema:
            table = table.cast(self.schema)
        self.writer.write_table(table)
        self.rows += len(frame)

    def close(self, columns: list[str]) -> None:
        if self.writer is None:         # nothing scored: still write the header / schema
            import pandas as pd

            self.write(pd.DataFrame({c: pd.Series([], dtype="float64") for c in columns}))
        self.writer.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        try:
            if self.writer is not None:
                self.writer.close()
        except Exception:
            pass
        self.tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# progress
# ----------------------------------------------------------------------------------------------
class _Progress:
    """A bar in a terminal (tqdm when installed, else one carriage-return line), nbdeploy's
    step row in a notebook, or a callback that receives :class:`nbdeploy.pipeline.StepEvent`."""

    def __init__(self, progress: Any, total: int | None, name: str):
        self.total, self.name = total, name
        self.t0 = time.perf_counter()
        self.done = 0
        self.fn: Callable | None = None
        self.bar = self.row = None
        self.line = False          # no tqdm: one carriage-return line
        self._last = 0.0
        if callable(progress):
            self.fn = progress
        elif progress:
            self.row = _notebook_row()
            if self.row is None and sys.stderr.isatty():
                try:
                    from tqdm import tqdm

                    self.bar = tqdm(total=total, unit="rows", unit_scale=True, desc="nbdeploy score",
                                    file=sys.stderr, ncols=_size()[0], nrows=_size()[1])
                except ImportError:
                    self.line = True

    def _summary(self) -> str:
        el = time.perf_counter() - self.t0
        rate = self.done / el if el > 0 else 0.0
        of = f"/{self.total:,}" if self.total else ""
        return f"{self.done:,}{of} rows of {self.name}, {rate:,.0f} rows/s"

    def _event(self, state: str, summary: str | None = None) -> None:
        from .pipeline import StepEvent

        frac = min(1.0, self.done / self.total) if self.total else None
        ev = StepEvent("score", state, time.perf_counter() - self.t0, summary or self._summary(), frac)
        if self.fn is not None:
            try:
                self.fn(ev)
            except Exception:   # a broken view never breaks the run
                pass
        if self.row is not None:
            self.row.update(ev.state, ev.elapsed_s, ev.summary, ev.fraction)

    def update(self, n: int) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
        elif self.line:
            now = time.perf_counter()
            if now - self._last > 0.2:
                self._last = now
                print(f"\rnbdeploy score: {self._summary()}", end="", file=sys.stderr, flush=True)
        if self.fn is not None or self.row is not None:
            self._event("running")

    def close(self, ok: bool, summary: str = "") -> None:
        if self.bar is not None:
            self.bar.close()
        elif self.line:
            print(f"\rnbdeploy score: {self._summary()}", file=sys.stderr, flush=True)
        if self.fn is not None or self.row is not None:
            self._event("done" if ok else "failed", summary or None)


def _size() -> tuple[int, int]:
    """The terminal's columns and lines; one that reports 0 x 0 (a bare pseudo-terminal) gets
    100 x 24, since tqdm draws nothing in a terminal with no lines."""
    try:
        size = os.get_terminal_size(sys.stderr.fileno())
        return size.columns or 100, size.lines or 24
    except (OSError, ValueError):
        return 100, 24


def _notebook_row():
    """nbdeploy's widget step row, displayed, when running inside a Jupyter kernel."""
    ipy = sys.modules.get("IPython")
    if ipy is None:
        return None
    try:
        shell = ipy.get_ipython()
        if shell is None or getattr(shell, "kernel", None) is None:
            return None
        from IPython.display import display

        from .widget import StepRow

        row = StepRow("score")
        display(row.box)
        return row
    except Exception:
        return None


# ----------------------------------------------------------------------------------------------
# the entry point
# ----------------------------------------------------------------------------------------------
@dataclass
class ScoreResult:
    """What :func:`score` did when it wrote to ``output``."""

    tag: str
    output: str | None
    rows: int
    rejected: int
    seconds: float
    rejects: str | None = None
    columns: list[str] = field(default_factory=list)

    @property
    def rows_per_s(self) -> float:
        return (self.rows + self.rejected) / self.seconds if self.seconds > 0 else 0.0

    def to_dict(self) -> dict:
        return {"tag": self.tag, "output": self.output, "rows": self.rows, "rejected": self.rejected,
                "seconds": round(self.seconds, 3), "rows_per_s": round(self.rows_per_s, 1),
                "rejects": self.rejects, "columns": self.columns}

    def __str__(self) -> str:
        s = (f"scored {self.rows:,} rows with {self.tag} in {self.seconds:.2f}s "
             f"({self.rows_per_s:,.0f} rows/s)")
        if self.output:
            s += f" -> {self.output}"
        if self.rejects is not None:
            s += f"; {self.rejected:,} bad rows -> {self.rejects}"
        return s

    def _repr_html_(self) -> str:
        from .report import kv_table

        return kv_table({k: v for k, v in self.to_dict().items() if v is not None})


def score(bundle: Any, data: Any, *, output: str | os.PathLike | None = None,
          explain: bool = False, batch_size: int | None = None, progress: Any = True,
          rejects: str | os.PathLike | None = None, keep_columns: list[str] | None = None,
          overwrite: bool = False, threads: int | None = None) -> Any:
    """Score ``data`` with a bundle's chosen ONNX variant, validated as ``POST /predict`` does.

    ``bundle``: a tag (``NAME`` or ``NAME:VERSION``), a :class:`~nbdeploy.Deployment`, or the
    path of an archive from ``nbdeploy export`` (imported into the store first, with every
    import check).  ``data``: a pandas DataFrame (columns by name; others ignored), a numpy
    array (columns in training order), or a path to a Parquet, CSV or JSON-lines file or a
    folder of them, read in chunks of ``batch_size`` rows (default 20,000).

    Returns a DataFrame with ``prediction``, ``proba_<class>`` per class (classifiers) and, with
    ``explain=True``, ``shap_<column>`` per input column, ``shap_base`` and ``shap_output``
    (the output explained: as the served ``/explain`` by default: the positive class of a
    binary classifier, the predicted class otherwise; ``shap_base + sum(shap_*)`` equals that
    output).  Its index is the input's (a DataFrame's own index, else row numbers).  With
    ``output`` (``.parquet`` or ``.csv``) the results are written there chunk by chunk instead
    and a :class:`ScoreResult` is returned.

    Bad rows stop the run with an :class:`~nbdeploy.errors.InvalidInputError` naming the row
    (0-based over the whole input), unless ``rejects`` names a JSON-lines file to collect them
    in (the rest is scored; the output then has a ``row`` column).  ``keep_columns`` copies
    input columns (e.g. an id) into the output.  ``threads``: onnxruntime's threads (default:
    one per core).  ``progress``: True (a bar in a terminal,
    nbdeploy's step row in a notebook), False, or a callback receiving
    :class:`~nbdeploy.pipeline.StepEvent` objects for the step ``"score"``.
    """
    t0 = time.perf_counter()
    if batch_size is None:
        batch_size = DEFAULT_BATCH_SIZE
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise InvalidInputError(f"batch_size must be a positive integer; got {batch_size!r}.",
                                hint="e.g. batch_size=10000 (rows per chunk).",
                                expected=">= 1", received=repr(batch_size)[:40])
    keep = [str(k) for k in (keep_columns or [])]
    out_path = _check_output(output, overwrite) if output is not None else None
    rej_path = _check_output(rejects, overwrite, what="rejects", formats=None) \
        if rejects is not None else None
    if out_path is not None and rej_path is not None and out_path == rej_path:
        raise InvalidInputError("output and rejects must be different files.",
                                received=str(out_path))
    if out_path is not None and isinstance(data, (str, os.PathLike)) and \
            Path(os.fspath(data)).expanduser().absolute() == out_path:
        raise InvalidInputError("output must not be the input file.", received=str(out_path))

    _require("pandas")
    if output is not None or isinstance(data, (str, os.PathLike)):
        _require("pyarrow")
    tag, model_dir = resolve_bundle(bundle)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int)
                                or threads < 1):
        raise InvalidInputError(f"threads must be a positive integer; got {threads!r}.",
                                expected=">= 1", received=repr(threads)[:40])
    scorer = Scorer(model_dir, threads=threads)
    if explain:
        _ = scorer.explainer   # fail before reading any data when the bundle has no SHAP
    columns = scorer.output_columns(explain=bool(explain))
    source = _open_source(data, scorer, batch_size, keep)
    bar = _Progress(progress, source.total, source.name)
    writer = _Writer(out_path, OUTPUT_FORMATS[out_path.suffix.lower()]) if out_path else None
    rej_file = open(rej_path.with_name(f".{rej_path.name}.partial"), "w", encoding="utf-8") \
        if rej_path else None
    parts, n_rows, n_bad = [], 0, 0
    chunks = _Prefetch(source.chunks)
    try:
        for start, frame, index in chunks:
            scored, bad, pos = scorer.score_frame(frame, start=start, explain=bool(explain),
                                                  collect=rej_file is not None, index=index)
            for k in keep:
                scored[k] = frame[k].to_numpy()[pos]
            if rej_file is not None:
                for b in bad:
                    rej_file.write(json.dumps(b, default=str) + "\n")
                if writer is not None:
                    scored.insert(0, ROW, pos + start)
            n_rows += len(scored)
            n_bad += len(bad)
            if writer is not None:
                if len(scored):
                    writer.write(scored)
            else:
                parts.append(scored)
            bar.update(len(frame))
    except BaseException as exc:
        chunks.close()
        if writer is not None:
            writer.abort()
        if rej_file is not None:
            rej_file.close()
            Path(rej_file.name).unlink(missing_ok=True)
        bar.close(False, exc.message if isinstance(exc, NbdeployError) else type(exc).__name__)
        raise
    seconds = time.perf_counter() - t0
    if rej_file is not None:
        rej_file.close()
        os.replace(rej_file.name, rej_path)
    result = ScoreResult(tag=tag, output=str(out_path) if out_path else None, rows=n_rows,
                         rejected=n_bad, seconds=seconds, rejects=str(rej_path) if rej_path else None,
                         columns=([ROW] if rej_path and out_path else []) + columns + keep)
    if writer is not None:
        writer.close(result.columns)
        bar.close(True, str(result))
        return result
    bar.close(True, str(result))
    import pandas as pd

    df = pd.concat(parts) if parts else pd.DataFrame({c: [] for c in columns + keep})
    df.attrs["nbdeploy"] = result.to_dict()
    return df


def _require(package: str) -> None:
    import importlib.util

    if importlib.util.find_spec(package) is None:
        raise missing(package, "batch", "to score files and DataFrames")


def _check_output(path: Any, overwrite: bool, *, what: str = "output",
                  formats: dict | None = OUTPUT_FORMATS) -> Path:
    p = Path(os.fspath(path)).expanduser().absolute()
    if formats is not None and p.suffix.lower() not in formats:
        raise InvalidInputError(f"Cannot write {what} {p.name}: the suffix must be .parquet or .csv.",
                                hint="e.g. output='scores.parquet'.", expected=sorted(formats),
                                received=p.suffix or "(none)")
    if p.is_dir():
        raise InvalidInputError(f"{what} {p} is a folder; give a file name.", received=str(p))
    if not p.parent.is_dir():
        raise NotFoundError(f"The folder of {what} {p.name} does not exist: {p.parent}.",
                            hint="Create it first.")
    if p.exists() and not overwrite:
        raise InvalidInputError(f"{what} {p} already exists.",
                                hint="Pass overwrite=True (CLI: --overwrite) or another file name.")
    return p
