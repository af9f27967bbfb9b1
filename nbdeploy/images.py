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
    """Drift for images: PSI over per-image channel means/stds and brightness (not per pixel),
    against the sample.  The served monitor computes the same statistics (``"image"`` key)."""
    import json
    from pathlib import Path

    from .drift import baseline
    from .runtime.images import image_stats

    base = baseline(image_stats(X, spec), stat_names(spec))
    base["image"] = {"input_shape": spec["input_shape"], "layout": spec.get("layout")}
    path = Path(model_dir) / "baseline.json"
    path.write_text(json.dumps(base), encoding="utf-8")
    return path


def explain_image(deployment, images: np.ndarray, *, patch: int | None = None, baseline: float = 0.0,
                  output: Any = "auto", overlay: bool = False) -> dict:
    """Occlusion attributions in the notebook, computed as the bundle's ``/explain`` does (same
    code, same ONNX model): ``images`` are model inputs [N, *input_shape] (or flat rows)."""
    from .runtime.images import occlusion
    from .runtime.model import OnnxModel

    spec = deployment.chosen_spec
    X = np.asarray(images, dtype=np.float32).reshape(len(images), -1)
    model = OnnxModel(deployment.chosen_model.SerializeToString(), spec)
    options = {"baseline": baseline, "output": output, "overlay": overlay}
    if patch is not None:
        options["patch"] = patch
    return occlusion(model, X, spec, options)


def heatmap_figure(result: dict, images: np.ndarray, *, max_images: int = 4):
    """A matplotlib figure: each image beside its attribution heat map (red for the class,
    blue against), titled with the explained class and its probability."""
    import matplotlib.pyplot as plt

    n = min(len(result["attributions"]), max_images)
    fig, axes = plt.subplots(2, n, figsize=(2.2 * n, 4.4), squeeze=False)
    layout = result.get("layout", "NCHW")
    for i in range(n):
        img = np.asarray(images[i], dtype=np.float64).reshape(result["shape"])
        a = np.asarray(result["attributions"][i], dtype=np.float64).reshape(result["shape"])
        if img.ndim == 3:
            ch = 0 if layout == "NCHW" else 2
            img_show = img.mean(axis=ch)
            a = a.sum(axis=ch)
        else:
            img_show = img
        lim = float(np.abs(a).max()) or 1.0
        axes[0, i].imshow(img_show, cmap="gray")
        axes[0, i].set_title(f"{result['explained_output'][i]} ({result['outputs'][i]:.2f})", fontsize=9)
        axes[1, i].imshow(a, cmap="bwr", vmin=-lim, vmax=lim)
        for ax in axes[:, i]:
            ax.set_axis_off()
    fig.suptitle("occlusion attributions (red: for the class)", fontsize=10)
    fig.tight_layout()
    return fig
