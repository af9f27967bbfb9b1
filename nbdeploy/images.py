"""Image and N-D tensor models on the notebook side (issue 22).

Models whose input has rank > 2 ([N, C, H, W], [N, H, W, C], [N, T, F]) are served through a
graph whose input is *flat* ([N, prod(shape)]) followed by one Reshape node: every step that
works on row matrices (verify, benchmark, quantize, explain, drift, the served validation)
then works unchanged, and the real shape is recorded in the spec as ``input_shape``
([None, *shape]) and ``layout``.  The runtime (``runtime/images.py``) turns N-D arrays and
images sent over HTTP into those flat rows.

:class:`ImagePreprocess` says how an image file becomes the model's input; it is applied in the
bundle with Pillow and numpy (no torchvision).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from .errors import InvalidInputError

LAYOUTS = ("NCHW", "NHWC")


def guess_layout(shape: Sequence[int], framework: str) -> str:
    """Name the axes of an input of shape ``[N, *shape]``."""
    shape = tuple(shape)
    if len(shape) == 3:
        if shape[0] in (1, 3, 4) and shape[-1] not in (1, 3, 4):
            return "NCHW"
        if shape[-1] in (1, 3, 4) and shape[0] not in (1, 3, 4):
            return "NHWC"
        return "NHWC" if framework == "keras" else "NCHW"
    if len(shape) == 2:
        return "NTF"
    return "N" + "?" * len(shape)


def flat_input(onx, shape: Sequence[int]):
    """Put a Reshape in front of the graph's first input: it then takes [N, prod(shape)] float
    rows; the original N-D input becomes an internal tensor."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    g = onx.graph
    init_names = {i.name for i in g.initializer}
    inp = next(i for i in g.input if i.name not in init_names)
    name, inner = inp.name, inp.name + "_nd"
    for node in g.node:
        for k, v in enumerate(node.input):
            if v == name:
                node.input[k] = inner
    for out in g.output:        # an identity graph
        if out.name == name:
            out.name = inner
    elem = inp.type.tensor_type.elem_type or TensorProto.FLOAT
    shape_name = "nbdeploy_input_shape"
    g.initializer.append(numpy_helper.from_array(np.asarray([-1, *shape], dtype=np.int64), shape_name))
    g.node.insert(0, helper.make_node("Reshape", [name, shape_name], [inner], name="nbdeploy_unflatten"))
    new = helper.make_tensor_value_info(name, elem, ["N", int(np.prod(shape))])
    idx = list(g.input).index(inp)
    g.input.remove(inp)
    g.input.insert(idx, new)
    onnx.checker.check_model(onx)
    return onx


@dataclass(frozen=True)
class ImagePreprocess:
    """How an image becomes the model's input, as in the notebook's transforms.

    ``size``: (height, width) or one int (square) to resize to; ``crop``: an optional centre
    crop (height, width) after the resize; ``mode``: Pillow mode the image is converted to
    ("L" grey, "RGB"); pixels are scaled to [0, 1] (``/ 255``), then ``(x - mean) / std`` per
    channel; ``layout``: "NCHW" (PyTorch) or "NHWC" (Keras/TensorFlow).

    We take it as an explicit object rather than inferring it from a torchvision ``Compose``:
    torchvision is often absent (or mismatched with torch), and a transform list can hold any
    callable; a dataclass states exactly what the bundle will do.
    """

    size: Any
    mean: Sequence[float] = (0.0,)
    std: Sequence[float] = (1.0,)
    layout: str = "NCHW"
    mode: str = "RGB"
    crop: Any = None
    resample: str = "bilinear"
    max_pixels: int = 40_000_000

    def _hw(self, v) -> list[int]:
        if isinstance(v, int):
            return [v, v]
        return [int(v[0]), int(v[1])]

    def to_dict(self) -> dict:
        if self.layout not in LAYOUTS:
            raise InvalidInputError(f"Unknown image layout {self.layout!r}.",
                                    hint="Use layout='NCHW' (PyTorch) or 'NHWC' (Keras).",
                                    expected=list(LAYOUTS), received=self.layout)
        if self.mode not in ("L", "RGB"):
            raise InvalidInputError(f"Unknown image mode {self.mode!r}.", hint="Use mode='L' or 'RGB'.",
                                    expected=["L", "RGB"], received=self.mode)
        return {"kind": "image", "size": self._hw(self.size),
                "crop": self._hw(self.crop) if self.crop is not None else None,
                "mean": [float(m) for m in self.mean], "std": [float(s) for s in self.std],
                "layout": self.layout, "mode": self.mode, "resample": self.resample,
                "max_pixels": int(self.max_pixels)}

    def check(self, input_shape: Sequence[int] | None) -> dict:
        """The spec entry, checked against the model's input shape ([None, ...])."""
        d = self.to_dict()
        channels = 1 if self.mode == "L" else 3
        h, w = d["crop"] or d["size"]
        want = [channels, h, w] if self.layout == "NCHW" else [h, w, channels]
        got = list(input_shape or [])[1:]
        if got != want:
            raise InvalidInputError(
                f"The preprocessing gives images of shape {want} ({self.layout}, mode {self.mode}); "
                f"the model takes {got}.",
                hint="Match size/crop, mode ('L' = 1 channel, 'RGB' = 3) and layout to the sample.",
                expected=got, received=want)
        for name, v in (("mean", d["mean"]), ("std", d["std"])):
            if len(v) not in (1, channels):
                raise InvalidInputError(f"{name} has {len(v)} values for {channels} channel(s).",
                                        hint="Give one value or one per channel.",
                                        expected=channels, received=len(v))
        if any(s == 0 for s in d["std"]):
            raise InvalidInputError("std must not be 0.", hint="Use the training std per channel.")
        return d

    def __call__(self, image) -> np.ndarray:
        """Apply to a PIL image or encoded bytes in the notebook: one flat row, as served."""
        from .runtime.images import preprocess_image

        return preprocess_image(image, self.to_dict())


def stat_names(spec: dict) -> list[str]:
    """Names of :func:`nbdeploy.runtime.images.image_stats`'s columns."""
    shape = spec["input_shape"][1:]
    layout = spec.get("layout") or "NCHW"
    c = (shape[0] if layout == "NCHW" else shape[-1]) if len(shape) == 3 else int(np.prod(shape[1:]))
    return [f"mean_c{i}" for i in range(c)] + [f"std_c{i}" for i in range(c)] + ["brightness"]


def write_image_baseline(model_dir, X: np.ndarray, spec: dict):
    """The image bundle's build-time artefacts (the pipeline calls this once ``model.onnx`` and
    ``spec.json`` are in ``model_dir``):

    * drift: PSI over per-image channel means/stds and brightness (not per pixel), against the
      sample; the served monitor computes the same statistics (``"image"`` key);
    * the report's heat map: :func:`write_image_explanation` on the sample's first image (a
      failure there only leaves the report without it)."""
    import json
    import logging
    from pathlib import Path

    from .drift import baseline
    from .runtime.images import image_stats

    base = baseline(image_stats(X, spec), stat_names(spec))
    base["image"] = {"input_shape": spec["input_shape"], "layout": spec.get("layout")}
    path = Path(model_dir) / "baseline.json"
    path.write_text(json.dumps(base), encoding="utf-8")
    if (Path(model_dir) / "model.onnx").is_file():
        try:
            write_image_explanation(model_dir, X, spec)
        except Exception as exc:   # the heat map is a bonus: the bundle is complete without it
            logging.getLogger(__name__).warning("image explanation not stored: %s", exc)
    return path


#: the report's heat map, in the bundle's ``model/`` folder: arrays as JSON, the overlay as PNG
EXPLANATION_JSON = "image_explanation.json"
EXPLANATION_PNG = "image_explanation.png"
TOP_CLASSES = 3


def write_image_explanation(model_dir, X: np.ndarray, spec: dict, *, index: int = 0,
                            top: int = TOP_CLASSES) -> dict:
    """Occlusion attributions of the bundle's own ``model.onnx`` (the code ``/explain`` runs) on
    sample image ``index``, stored for the report: ``image_explanation.json`` (the image in model
    units, the attribution map [H, W], the explained class, the top classes and their scores)
    and ``image_explanation.png`` (the overlay).  JSON and PNG only, never pickle."""
    import base64
    import json
    from pathlib import Path

    from .runtime.images import item_shape, occlusion, spatial_dims
    from .runtime.model import OnnxModel

    model_dir = Path(model_dir)
    if (model_dir / "spec.json").is_file():    # the bundle's own spec (its class names)
        spec = json.loads((model_dir / "spec.json").read_text(encoding="utf-8"))
    model = OnnxModel(str(model_dir / "model.onnx"), spec, threads=1)
    row = np.asarray(X, dtype=np.float32).reshape(len(X), -1)[index:index + 1]
    res = occlusion(model, row, spec, {"overlay": True})
    shape, layout = item_shape(spec), spec.get("layout") or "NCHW"
    a = np.asarray(res["attributions"][0], dtype=np.float64).reshape(shape)
    if len(shape) == 3:      # per-pixel map: the channels' shares summed back
        a = a.sum(axis=0 if layout == "NCHW" else 2)
    scores = model.output_matrix(row)[0]
    classes = spec.get("classes")
    order = np.argsort(-scores)[:top]
    out = {"method": "occlusion", "sample_index": int(index), "patch": res["patch"],
           "baseline": res["baseline"], "shape": res["shape"], "layout": layout,
           "spatial": list(spatial_dims(shape, layout)), "image": np.round(row[0], 7).tolist(),
           "attribution": np.round(a, 9).tolist(), "explained_output": res["explained_output"][0],
           "output": res["outputs"][0], "base_value": res["base_values"][0],
           "output_space": "probability" if spec.get("task") == "classifier" else "value",
           "top_classes": [{"label": classes[k] if classes is not None else int(k),
                            "score": float(scores[k])} for k in order],
           "png": EXPLANATION_PNG}
    (model_dir / EXPLANATION_PNG).write_bytes(base64.b64decode(res["overlay_png"][0]))
    (model_dir / EXPLANATION_JSON).write_text(json.dumps(out, default=str), encoding="utf-8")
    return out


def read_image_explanation(model_dir) -> tuple[dict, bytes] | None:
    """The stored heat map of a bundle (``model/``), or None when it has none."""
    import json
    from pathlib import Path

    folder = Path(model_dir)
    js, png = folder / EXPLANATION_JSON, folder / EXPLANATION_PNG
    if not (js.is_file() and png.is_file()):
        return None
    return json.loads(js.read_text(encoding="utf-8")), png.read_bytes()


def explain_image(deployment, images: np.ndarray, *, method: str = "occlusion", patch: int | None = None,
                  baseline: float = 0.0, output: Any = "auto", overlay: bool = False,
                  max_evals: int | None = None, num_samples: int | None = None) -> dict:
    """Image attributions in the notebook, computed as the bundle's ``/explain`` does (same code,
    same ONNX model): ``images`` are model inputs [N, *input_shape] (or flat rows).  ``method``:
    "occlusion" (``patch``), "shap" (partition explainer with an image masker, ``max_evals``;
    attributions sum to ``outputs - base_values``) or "lime" (superpixels, ``num_samples``)."""
    from .runtime.model import OnnxModel

    spec = deployment.chosen_spec
    X = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    model = OnnxModel(deployment.chosen_model.SerializeToString(), spec)
    options = {"baseline": baseline, "output": output, "overlay": overlay}
    for key, value in (("patch", patch), ("max_evals", max_evals), ("num_samples", num_samples)):
        if value is not None:
            options[key] = value
    if method == "occlusion":
        from .runtime.images import occlusion

        return occlusion(model, X, spec, options)
    from .runtime.images import ImageExplainer

    ex = ImageExplainer(model)
    ex.budget["warmup_wait_s"] = 600.0     # the notebook waits for shap's one-time compilation
    return ex.explain(X, method, options)


def heatmap_figure(result: dict, images: np.ndarray, *, max_images: int = 4):
    """A figure of each image beside its attribution heat map (:func:`nbdeploy.plots.heatmap_figure`)."""
    from .plots import heatmap_figure as draw

    return draw(result, images, max_images=max_images)


def named_classes(names: Any, classes: Sequence | None, model: Any = None) -> list | None:
    """Class names for a classifier whose outputs are indices 0..k-1 (PyTorch, Keras CNNs):
    ``names`` given by the user (a list in output order, or an ``id2label`` dict {index: name}),
    else the model's own ``config.id2label`` (Hugging Face-like models); None when there are
    none.  ``classes`` is the converted spec's class list (its length is the number of outputs).
    The served ``/predict`` then answers with these names (``spec["classes"]``)."""
    if classes is None:
        if names is not None:
            raise InvalidInputError("class_names were given for a model that is not a classifier.",
                                    hint="Pass class_names only for classifiers (or task='classifier').",
                                    expected="a classifier", received="no classes")
        return None
    k = len(classes)
    source = "class_names"
    if names is None:
        id2label = getattr(getattr(model, "config", None), "id2label", None)
        if not isinstance(id2label, dict) or not id2label:
            return None
        names, source = id2label, "model.config.id2label"
    if isinstance(names, dict):
        try:
            by_index = {int(i): v for i, v in names.items()}
        except (TypeError, ValueError) as exc:
            raise InvalidInputError(f"{source} keys must be class indices 0..{k - 1}.",
                                    hint="Use {0: 'cat', 1: 'dog', ...}.", expected="int keys",
                                    received=sorted(map(str, names))[:5]) from exc
        if sorted(by_index) != list(range(k)):
            raise InvalidInputError(f"{source} must name every output 0..{k - 1} once; got keys "
                                    f"{sorted(by_index)[:10]}.",
                                    hint=f"The model has {k} outputs.", expected=k, received=len(by_index))
        names = [by_index[i] for i in range(k)]
    if isinstance(names, (str, bytes)) or not isinstance(names, Sequence) and not hasattr(names, "tolist"):
        raise InvalidInputError(f"{source} must be a list of names in output order.",
                                hint="Use class_names=['cat', 'dog', ...].", expected="list",
                                received=type(names).__name__)
    names = list(names.tolist() if hasattr(names, "tolist") else names)
    if len(names) != k:
        raise InvalidInputError(f"{source} has {len(names)} names; the model has {k} outputs.",
                                hint="Give one name per output, in output order.", expected=k,
                                received=len(names))
    out = [n if isinstance(n, (int, float)) and not isinstance(n, bool) else str(n) for n in names]
    if len(set(map(str, out))) != k:
        raise InvalidInputError(f"{source} has duplicate names.", hint="Give every class its own name.",
                                expected="unique names", received=out[:10])
    return out
