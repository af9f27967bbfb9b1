"""N-D tensors and images inside the served bundle (issue 22).

A model with ``spec["input_shape"] = [None, *shape]`` (rank > 2) is served through a graph that
takes flat rows [N, prod(shape)] (see ``nbdeploy/images.py``).  This module turns request bodies
into those rows:

* ``{"inputs": [...]}`` with N-D arrays of shape [N, *shape] (or flat rows);
* ``{"images": ["<base64 PNG/JPEG>", ...]}`` and multipart file uploads, decoded with Pillow
  and preprocessed per ``spec["preprocess"]`` (resize, centre crop, mode, /255, mean/std,
  layout).

Untrusted bytes: decoded pixels are capped (``max_pixels``) *before* decoding (Pillow reads the
size from the header), Pillow's own bomb check is on, and every failure is a 400 naming why.
Only numpy and Pillow; Pillow is imported on the first image.
"""

from __future__ import annotations

import base64
import binascii
import io
from typing import Any

import numpy as np

from .clienterror import F32_MAX, ClientError

#: formats a bundle decodes (Pillow's plugins for anything else are never consulted)
FORMATS = ("PNG", "JPEG")
DEFAULT_MAX_PIXELS = 40_000_000


def is_nd(spec: dict | None) -> bool:
    shape = (spec or {}).get("input_shape")
    return bool(shape) and len(shape) > 2


def item_shape(spec: dict) -> tuple:
    return tuple(int(d) for d in spec["input_shape"][1:])


def parse_body(body: dict, *, spec: dict, max_rows: int, key: str = "inputs") -> np.ndarray:
    """A validated float32 matrix [N, prod(shape)] from ``inputs`` (N-D arrays) or ``images``."""
    if "images" in body and spec.get("preprocess"):
        return parse_images(body["images"], spec=spec, max_rows=max_rows)
    shape = item_shape(spec)
    n = int(np.prod(shape))
    if key not in body:
        fields = "'inputs' or 'images'" if spec.get("preprocess") else "'inputs'"
        raise ClientError(400, f"The request body has no {fields} field (fields: {sorted(body)[:10]}).",
                          hint=f'Send {{"{key}": [array of shape {list(shape)}, ...]}}'
                               + (' or {"images": ["<base64 PNG>"]}.' if spec.get("preprocess") else "."),
                          expected=key, received=sorted(body)[:10])
    rows = body[key]
    if not isinstance(rows, list) or not rows:
        raise ClientError(400, f"{key!r} must be a non-empty list of arrays of shape {list(shape)}.",
                          hint="Wrap a single input in a list: [input].", expected="list",
                          received=type(rows).__name__ if not isinstance(rows, list) else 0)
    if len(rows) > max_rows:
        raise ClientError(400, f"Too many inputs in one request: {len(rows)} > the limit of {max_rows}.",
                          hint=f"Split the request into batches of at most {max_rows}.",
                          expected=f"<= {max_rows}", received=len(rows))
    try:
        arr = np.asarray(rows)
    except (ValueError, TypeError):
        arr = None
    if arr is None or arr.dtype.kind not in "iuf":
        raise ClientError(400, f"Each input must be a numeric array of shape {list(shape)} "
                               "(same shape for all, numbers only).",
                          hint="Send nested lists of numbers, e.g. x.tolist() for x of shape "
                               f"[N, {', '.join(map(str, shape))}].",
                          expected=list(shape), received="ragged or non-numeric")
    if tuple(arr.shape[1:]) == shape:
        arr = arr.reshape(len(arr), n)
    elif not (arr.ndim == 2 and arr.shape[1] == n):
        raise ClientError(400, f"Each input must have shape {list(shape)}; got {list(arr.shape[1:])}.",
                          hint="See GET /metadata for the input shape and layout.",
                          expected=list(shape), received=list(arr.shape[1:]))
    if arr.dtype.kind == "f" and (~np.isfinite(arr) | (np.abs(arr) > F32_MAX)).any():
        bad = np.where(~(np.isfinite(arr) & (np.abs(arr) <= F32_MAX)).all(axis=1))[0]
        raise ClientError(400, f"NaN, infinite or out-of-float32 values in {len(bad)} input(s) "
                               f"(first: {int(bad[0])}).", hint="Send finite float32 values.",
                          expected="finite numbers", received=f"{len(bad)} bad inputs")
    return arr.astype(np.float32)


def parse_images(items: Any, *, spec: dict, max_rows: int) -> np.ndarray:
    """Decode and preprocess a list of images (base64 strings or raw bytes)."""
    if not isinstance(items, list) or not items:
        raise ClientError(400, "'images' must be a non-empty list of base64-encoded PNG/JPEG files.",
                          hint='Send {"images": [base64.b64encode(open("x.png", "rb").read()).decode()]}.',
                          expected="list of base64 strings", received=type(items).__name__)
    if len(items) > max_rows:
        raise ClientError(400, f"Too many images in one request: {len(items)} > the limit of {max_rows}.",
                          hint=f"Split the request into batches of at most {max_rows}.",
                          expected=f"<= {max_rows}", received=len(items))
    pre = spec["preprocess"]
    rows = []
    for i, item in enumerate(items):
        data = item
        if isinstance(item, str):
            s = item.split(",", 1)[1] if item.startswith("data:") and "," in item else item
            try:
                data = base64.b64decode(s, validate=True)
            except (binascii.Error, ValueError) as exc:
                raise ClientError(400, f"Image {i} is not valid base64: {exc}.",
                                  hint="Encode the file's bytes with standard base64.",
                                  expected="base64", received=item[:20]) from exc
        if not isinstance(data, (bytes, bytearray)):
            raise ClientError(400, f"Image {i} must be a base64 string; got {type(item).__name__}.",
                              hint="Send the file's bytes, base64-encoded.", expected="string",
                              received=type(item).__name__)
        try:
            rows.append(preprocess_image(bytes(data), pre))
        except ClientError as exc:
            exc.message = f"Image {i}: {exc.message}"
            raise
    return np.stack(rows).astype(np.float32)


def open_image(data: bytes, pre: dict):
    """Open (and fully decode) an image from untrusted bytes, within the pixel cap."""
    from PIL import Image, UnidentifiedImageError

    limit = int(pre.get("max_pixels") or DEFAULT_MAX_PIXELS)
    try:
        img = Image.open(io.BytesIO(data), formats=FORMATS)
    except Image.DecompressionBombError as exc:
        raise ClientError(400, f"The image is too large: {exc}.", hint=f"Send at most {limit} pixels.",
                          expected=f"<= {limit} pixels", received="decompression bomb") from exc
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise ClientError(400, "The data is not a PNG or JPEG image.",
                          hint="Send the bytes of a PNG or JPEG file.",
                          expected=list(FORMATS), received="unreadable") from exc
    w, h = img.size
    if w * h > limit:
        raise ClientError(400, f"The image is too large: {w}x{h} = {w * h} pixels > the limit of "
                               f"{limit}.", hint="Resize it before sending.",
                          expected=f"<= {limit} pixels", received=f"{w}x{h}")
    if img.mode not in ("L", "RGB", "RGBA", "P", "LA", "I;16", "I", "1"):
        raise ClientError(400, f"Unsupported image mode {img.mode!r}.",
                          hint="Send a greyscale or RGB(A) PNG/JPEG.",
                          expected=["L", "RGB", "RGBA"], received=img.mode)
    if img.format == "JPEG":
        img.draft(pre.get("mode", "RGB"), tuple(reversed(pre["size"])))   # decode at a smaller scale
    try:
        img.load()
    except Exception as exc:   # truncated or corrupt data
        raise ClientError(400, f"The image could not be decoded: {type(exc).__name__}.",
                          hint="Send a complete PNG or JPEG file.", expected="a valid image",
                          received="corrupt data") from exc
    return img


def preprocess_image(image: Any, pre: dict) -> np.ndarray:
    """Bytes or a PIL image -> one flat float32 row, as the model takes it."""
    from PIL import Image

    img = open_image(image, pre) if isinstance(image, (bytes, bytearray)) else image
    mode = pre.get("mode", "RGB")
    if img.mode in ("I;16", "I"):
        if mode == "L":
            arr16 = np.asarray(img, dtype=np.float64)
            img = Image.fromarray(np.clip(arr16 / 257.0, 0, 255).astype(np.uint8), "L")
        else:
            raise ClientError(400, f"Image mode {img.mode!r} cannot be converted to {mode}.",
                              hint="Send an 8-bit RGB image.", expected=mode, received=img.mode)
    if img.mode != mode:
        img = img.convert(mode)
    h, w = pre["size"]
    resample = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                "bicubic": Image.Resampling.BICUBIC}.get(pre.get("resample", "bilinear"),
                                                          Image.Resampling.BILINEAR)
    if img.size != (w, h):
        img = img.resize((w, h), resample)
    arr = np.asarray(img, dtype=np.float32)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if pre.get("crop"):
        ch, cw = pre["crop"]
        top, left = max(0, (h - ch) // 2), max(0, (w - cw) // 2)
        arr = arr[top:top + ch, left:left + cw]
    arr = arr / 255.0
    mean = np.asarray(pre.get("mean") or [0.0], dtype=np.float32)
    std = np.asarray(pre.get("std") or [1.0], dtype=np.float32)
    arr = (arr - mean) / std
    if pre.get("layout", "NCHW") == "NCHW":
        arr = arr.transpose(2, 0, 1)
    return np.ascontiguousarray(arr, dtype=np.float32).reshape(-1)


def multipart_images(raw: bytes, content_type: str) -> dict:
    """``multipart/form-data`` uploads -> ``{"images": [bytes, ...]}`` (every file part, in order)."""
    from email.parser import BytesParser
    from email.policy import HTTP

    msg = BytesParser(policy=HTTP).parsebytes(
        b"Content-Type: " + content_type.encode("latin-1") + b"\r\n\r\n" + raw)
    if not msg.is_multipart():
        raise ClientError(400, "The multipart body could not be read.",
                          hint="Send files with curl -F 'file=@digit.png'.", expected="multipart/form-data")
    files = [part.get_payload(decode=True) or b"" for part in msg.iter_parts()
             if part.get_filename() is not None or part.get_content_maintype() == "image"]
    if not files:
        raise ClientError(400, "The multipart body has no file parts.",
                          hint="Send files with curl -F 'file=@digit.png'.", expected="file parts",
                          received=0)
    return {"images": files}


def image_stats(X: np.ndarray, spec: dict) -> np.ndarray:
    """Per-image statistics for drift: per-channel mean and std, and brightness: [N, 2C + 1]."""
    shape = item_shape(spec)
    layout = spec.get("layout") or "NCHW"
    x = X.reshape((len(X),) + shape)
    axes = (2, 3) if layout == "NCHW" and len(shape) == 3 else (1, 2) if len(shape) == 3 else tuple(range(1, x.ndim))
    mean = x.mean(axis=axes).reshape(len(X), -1)
    std = x.std(axis=axes).reshape(len(X), -1)
    return np.concatenate([mean, std, mean.mean(axis=1, keepdims=True)], axis=1)


# --- explanations: occlusion on the ONNX model -----------------------------------------------------
MAX_EXPLAIN_IMAGES = 4
MAX_OCCLUSION_PATCHES = 1024


def spatial_dims(shape: tuple, layout: str) -> tuple[int, int]:
    if len(shape) == 3:
        return (shape[1], shape[2]) if layout == "NCHW" else (shape[0], shape[1])
    return shape[0], shape[1]          # [T, F]: time x features


def occlusion(model, X: np.ndarray, spec: dict, options: dict | None = None) -> dict:
    """Occlusion attributions on the served ONNX model: each ``patch`` x ``patch`` square
    (stride ``patch``) is set to ``baseline`` (model-input units, default 0) and the drop of the
    explained class's score is spread over the square's pixels.  Returns arrays of the image's
    shape (``input_shape[1:]``); one batched onnxruntime call per image."""
    options = options or {}
    shape = item_shape(spec)
    layout = spec.get("layout") or "NCHW"
    if len(X) > MAX_EXPLAIN_IMAGES:
        raise ClientError(413, f"Too many images to explain: {len(X)} > the limit of {MAX_EXPLAIN_IMAGES}.",
                          hint=f"Send at most {MAX_EXPLAIN_IMAGES} images per /explain request.",
                          expected=f"<= {MAX_EXPLAIN_IMAGES}", received=len(X))
    h, w = spatial_dims(shape, layout)
    patch = options.get("patch", max(1, min(h, w) // 8))
    if isinstance(patch, bool) or not isinstance(patch, int) or not 1 <= patch <= max(h, w):
        raise ClientError(400, f"'patch' must be an integer from 1 to {max(h, w)}.",
                          expected=f"1..{max(h, w)}", received=repr(patch)[:40])
    baseline = options.get("baseline", 0.0)
    if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not np.isfinite(baseline):
        raise ClientError(400, "'baseline' must be a finite number.", expected="number",
                          received=repr(baseline)[:40])
    cells = [(i, j) for i in range(0, h, patch) for j in range(0, w, patch)]
    if len(cells) > MAX_OCCLUSION_PATCHES:
        raise ClientError(413, f"{len(cells)} patches > the limit of {MAX_OCCLUSION_PATCHES}.",
                          hint="Send a larger 'patch'.", expected=f"<= {MAX_OCCLUSION_PATCHES}",
                          received=len(cells))
    out = model.output_matrix(X)
    classes = spec.get("classes")
    request = options.get("output", "auto")
    attributions, explained, scores, bases, overlays = [], [], [], [], []
    for n, row in enumerate(X):
        if request in (None, "auto"):
            k = int(out[n].argmax())
        elif classes is not None and request in classes:
            k = classes.index(request)
        elif isinstance(request, int) and not isinstance(request, bool) and 0 <= request < out.shape[1]:
            k = request
        else:
            raise ClientError(400, f"Unknown output {request!r}.", hint="Use 'auto', a class label or index.",
                              expected=["auto"] + list(classes or []), received=repr(request)[:40])
        img = row.reshape(shape)
        batch = np.repeat(img[None], len(cells) + 1, axis=0)
        for c, (i, j) in enumerate(cells):
            _fill(batch[c], i, j, patch, layout, baseline)
        batch[-1][...] = baseline
        scores_b = model.output_matrix(batch.reshape(len(batch), -1))[:, k]
        attr = np.zeros((h, w), dtype=np.float64)
        for c, (i, j) in enumerate(cells):
            region = attr[i:i + patch, j:j + patch]
            region += (out[n, k] - scores_b[c]) / region.size
        full = broadcast_map(attr, shape, layout)
        attributions.append(np.round(full, 7).tolist())
        explained.append(classes[k] if classes is not None else k)
        scores.append(float(out[n, k]))
        bases.append(float(scores_b[-1]))
        if options.get("overlay"):
            overlays.append(overlay_png(img, attr, layout))
    body = {"method": "occlusion", "explainer": "occlusion", "shape": list(shape), "layout": layout,
            "patch": patch, "baseline": float(baseline), "explained_output": explained,
            "outputs": scores, "base_values": bases, "attributions": attributions}
    if overlays:
        body["overlay_png"] = overlays
    return body


def _fill(img: np.ndarray, i: int, j: int, p: int, layout: str, value: float) -> None:
    if img.ndim == 3 and layout == "NCHW":
        img[:, i:i + p, j:j + p] = value
    else:
        img[i:i + p, j:j + p] = value


def broadcast_map(attr: np.ndarray, shape: tuple, layout: str) -> np.ndarray:
    """Per-pixel attributions [H, W] -> the input's shape (split evenly over channels)."""
    if len(shape) == 3:
        c = shape[0] if layout == "NCHW" else shape[2]
        a = attr / c
        return np.broadcast_to(a[None], shape).copy() if layout == "NCHW" \
            else np.broadcast_to(a[:, :, None], shape).copy()
    return attr


def overlay_png(img: np.ndarray, attr: np.ndarray, layout: str, scale: int = 0) -> str:
    """A base64 PNG: the image in grey with positive attributions in red, negative in blue."""
    from PIL import Image

    grey = img.mean(axis=0) if img.ndim == 3 and layout == "NCHW" else (
        img.mean(axis=2) if img.ndim == 3 else img)
    g = grey - grey.min()
    g = g / g.max() if g.max() > 0 else g
    a = attr / (np.abs(attr).max() or 1.0)
    rgb = np.stack([g, g, g], axis=-1) * 0.5
    rgb[..., 0] += 0.5 * np.clip(a, 0, 1)
    rgb[..., 2] += 0.5 * np.clip(-a, 0, 1)
    im = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    factor = scale or max(1, 256 // max(im.size))
    if factor > 1:
        im = im.resize((im.size[0] * factor, im.size[1] * factor), Image.Resampling.NEAREST)
    buf = io.BytesIO()
    im.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii")


# --- SHAP (and LIME) for images: model-agnostic, on the ONNX model --------------------------------
#: defaults of the image explainer's budget; the bundle's ``explain_budget`` overrides them
IMAGE_BUDGET = {"max_evals": 1000, "max_evals_limit": 20000, "time_budget_s": 20.0,
                "lime_samples": 500, "max_lime_samples": 5000, "warmup_wait_s": 15.0}


_SHAP_READY = None      # threading.Event, set once shap's numba code is compiled in this process
_SHAP_ERROR: list = []


def _warm_shap(ready) -> None:
    """Compile shap's partition code (numba, 15-40 s on a small CPU, once per process) on a
    4x4 image, so that requests do not wait for it past the server's timeout."""
    try:
        import shap

        masker = shap.maskers.Image(0.0, (4, 4, 1))
        shap.explainers.Partition(lambda x: np.asarray(x).reshape(len(x), -1)[:, :2] * 1.0, masker)(
            np.ones((1, 4, 4, 1)), max_evals=40, batch_size=16, outputs=[0], silent=True)
    except Exception as exc:   # reported on the request
        _SHAP_ERROR.append(exc)
    finally:
        ready.set()


def start_shap_warmup():
    """Start compiling shap's image code in a background thread (idempotent); the event."""
    global _SHAP_READY
    if _SHAP_READY is None:
        import threading

        _SHAP_READY = threading.Event()
        threading.Thread(target=_warm_shap, args=(_SHAP_READY,), name="nbdeploy-image-shap-warmup",
                         daemon=True).start()
    return _SHAP_READY


class ImageExplainer:
    """``/explain`` with ``"method": "shap"`` (or ``"lime"``) for image bundles.

    SHAP: ``shap.explainers.Partition`` with ``shap.maskers.Image`` over the served ONNX model;
    hidden pixels take ``baseline`` (model-input units, 0 unless the request says otherwise),
    the same as occlusion.  Partition (Owen) values are additive: for every image the
    attributions sum to ``f(image) - f(fully masked image)`` for the explained class, and the
    response's ``base_values`` is ``f(fully masked image)``.  ``max_evals`` is bounded by the
    time budget: one timed model call sets how many evaluations fit.  LIME:
    ``lime.lime_image`` (needs scikit-image for its superpixels) where installed."""

    kind = "image"

    def __init__(self, model, budget: dict | None = None):
        self.model = model
        self.spec = model.spec
        self.shape = item_shape(self.spec)
        self.layout = self.spec.get("layout") or "NCHW"
        self.budget = dict(IMAGE_BUDGET, **{k: v for k, v in (budget or {}).items() if k in IMAGE_BUDGET})
        classes = self.spec.get("classes")
        self.class_names = [str(c) for c in classes] if classes is not None else []
        self.max_rows = MAX_EXPLAIN_IMAGES
        import importlib.util

        if importlib.util.find_spec("shap") is not None:   # compile it before the first request needs it
            start_shap_warmup()

    # the masker's view: [H, W, C] whatever the model's layout
    def _hwc(self, X: np.ndarray) -> np.ndarray:
        x = X.reshape((len(X),) + self.shape)
        if len(self.shape) == 2:
            return x[..., None]
        return x.transpose(0, 2, 3, 1) if self.layout == "NCHW" else x

    def _from_hwc(self, x: np.ndarray) -> np.ndarray:
        if len(self.shape) == 2:
            x = x[..., 0]
        elif self.layout == "NCHW":
            x = x.transpose(0, 3, 1, 2)
        return np.ascontiguousarray(x, dtype=np.float32).reshape(len(x), -1)

    def _f(self, x_hwc: np.ndarray) -> np.ndarray:
        return self.model.output_matrix(self._from_hwc(np.asarray(x_hwc)))

    def _class(self, out: np.ndarray, request) -> int:
        if request in (None, "auto"):
            return int(out.argmax())
        classes = self.spec.get("classes")
        if classes is not None and request in classes:
            return list(classes).index(request)
        if isinstance(request, int) and not isinstance(request, bool) and 0 <= request < len(out):
            return request
        raise ClientError(400, f"Unknown output {request!r}.", hint="Use 'auto', a class label or index.",
                          expected=["auto"] + self.class_names, received=repr(request)[:40])

    def _int(self, options: dict, key: str, low: int, high: int) -> int | None:
        v = options.get(key)
        if v is None:
            return None
        if isinstance(v, bool) or not isinstance(v, int):
            raise ClientError(400, f"{key!r} must be an integer.", expected="integer", received=repr(v)[:40])
        if not low <= v <= high:
            raise ClientError(413 if v > high else 400, f"{key!r} must be from {low} to {high}; got {v}.",
                              hint=f"Send {key} <= {high}.", expected=f"{low}..{high}", received=v)
        return v

    def explain(self, X: np.ndarray, method: str = "shap", options: dict | None = None) -> dict:
        import time

        options = options or {}
        if method not in ("shap", "lime"):
            raise ClientError(400, f"Unknown explanation method {method!r} for an image model.",
                              hint='Send "method": "occlusion", "shap" or "lime".',
                              expected=["occlusion", "shap", "lime"], received=repr(method)[:40])
        if len(X) > self.max_rows:
            raise ClientError(413, f"Too many images to explain: {len(X)} > the limit of {self.max_rows}.",
                              hint=f"Send at most {self.max_rows} images per /explain request.",
                              expected=f"<= {self.max_rows}", received=len(X))
        baseline = options.get("baseline", 0.0)
        if isinstance(baseline, bool) or not isinstance(baseline, (int, float)) or not np.isfinite(baseline):
            raise ClientError(400, "'baseline' must be a finite number.", expected="number",
                              received=repr(baseline)[:40])
        t0 = time.perf_counter()
        out = self.model.output_matrix(X)
        per_eval = max(time.perf_counter() - t0, 1e-4) / len(X)
        ks = [self._class(out[n], options.get("output", "auto")) for n in range(len(X))]
        if method == "lime":
            return self._lime(X, out, ks, options, baseline)
        return self._shap(X, out, ks, options, float(baseline), per_eval)

    def _shap(self, X, out, ks, options, baseline, per_eval) -> dict:
        import time

        try:
            import shap
        except ImportError as exc:
            raise ClientError(501, "SHAP for images needs the 'shap' package in this bundle.",
                              hint='Use "method": "occlusion", or rebuild with explain="shap".') from exc
        requested = self._int(options, "max_evals", 10, int(self.budget["max_evals_limit"]))
        if not start_shap_warmup().wait(float(self.budget["warmup_wait_s"])):
            raise ClientError(503, "SHAP for images is still starting: shap compiles its partition code "
                                   "once per server process (about 15-40 s on a small CPU).",
                              hint="Retry in a few seconds, or send \"method\": \"occlusion\" meanwhile.",
                              expected="a warm explainer", received="warming up")
        if _SHAP_ERROR:
            raise ClientError(501, f"SHAP for images cannot run in this bundle: {_SHAP_ERROR[0]}.",
                              hint='Use "method": "occlusion".')
        fit = int(float(self.budget["time_budget_s"]) / max(per_eval, 1e-6) / max(len(X), 1))
        max_evals = min(requested or int(self.budget["max_evals"]), max(fit, 10))
        hwc = self._hwc(X)
        masker = shap.maskers.Image(baseline, hwc.shape[1:])
        explainer = shap.explainers.Partition(self._f, masker)
        t0 = time.perf_counter()
        attributions, bases, totals = [], [], []
        for n, k in enumerate(ks):
            ex = explainer(hwc[n:n + 1], max_evals=max_evals, batch_size=64, outputs=[k], silent=True)
            v = np.asarray(ex.values, dtype=np.float64)[0, ..., 0]        # [H, W, C]
            attributions.append(np.round(self._from_hwc(v[None]).reshape(self.shape), 9).tolist())
            bases.append(float(np.asarray(ex.base_values).reshape(-1)[0]))
            totals.append(float(v.sum()))
        classes = self.spec.get("classes")
        return {"method": "shap", "explainer": "partition", "masker": "image", "shape": list(self.shape),
                "layout": self.layout, "baseline": baseline, "max_evals": int(max_evals),
                "explained_output": [classes[k] if classes is not None else k for k in ks],
                "outputs": [float(out[n, k]) for n, k in enumerate(ks)], "base_values": bases,
                "attribution_sums": totals, "attributions": attributions,
                "seconds": round(time.perf_counter() - t0, 3),
                "notes": ["Partition SHAP (Owen values) over the pixels with an image masker; hidden "
                          f"pixels are {baseline} in model units; attributions sum to output - base_value."]}

    def _lime(self, X, out, ks, options, baseline) -> dict:
        try:
            from lime import lime_image
        except ImportError as exc:   # lime_image imports scikit-image for its superpixels
            raise ClientError(501, "LIME for images needs 'lime' and 'scikit-image' in this bundle.",
                              hint='Use "method": "occlusion" or "shap".') from exc
        num_samples = self._int(options, "num_samples", 10, int(self.budget["max_lime_samples"])) \
            or int(self.budget["lime_samples"])
        seed = options.get("seed", 0)
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2 ** 32:
            raise ClientError(400, "'seed' must be an integer from 0 to 2**32-1.", received=repr(seed)[:40])
        from skimage.segmentation import slic

        hwc = self._hwc(X).astype(np.float64)
        h, w = hwc.shape[1:3]

        def segment(img):     # superpixels of about 4x4 pixels (8x8 digits: 4 of them)
            lo, hi = float(img.min()), float(img.max())
            norm = (img - lo) / (hi - lo) if hi > lo else img * 0
            n_seg = max(4, h * w // 16)
            if norm.shape[-1] == 1:
                return slic(norm[..., 0], n_segments=n_seg, compactness=0.1, start_label=0, channel_axis=None)
            return slic(norm, n_segments=n_seg, compactness=10, start_label=0, channel_axis=-1)

        def predict(batch):       # lime hands RGB-like [n, H, W, C] images
            return self._f(np.asarray(batch, dtype=np.float32))

        explainer = lime_image.LimeImageExplainer(random_state=seed)
        attributions, scores = [], []
        for n, k in enumerate(ks):
            e = explainer.explain_instance(hwc[n], predict, labels=(k,), top_labels=None, hide_color=baseline,
                                           num_samples=num_samples, segmentation_fn=segment,
                                           batch_size=64, random_seed=seed)
            a = np.zeros((h, w))
            for seg, weight in e.local_exp[k]:
                a[e.segments == seg] = weight
            attributions.append(np.round(broadcast_map(a, self.shape, self.layout), 9).tolist())
            scores.append(float(e.score[k]) if isinstance(e.score, dict) else float(e.score))
        classes = self.spec.get("classes")
        return {"method": "lime", "explainer": "lime_image", "shape": list(self.shape), "layout": self.layout,
                "baseline": baseline, "num_samples": num_samples, "seed": seed,
                "explained_output": [classes[k] if classes is not None else k for k in ks],
                "outputs": [float(out[n, k]) for n, k in enumerate(ks)], "scores": scores,
                "attributions": attributions,
                "notes": ["LIME over superpixels (SLIC): each superpixel's weight in a local linear "
                          "model, spread over its pixels (split evenly over channels)."]}
