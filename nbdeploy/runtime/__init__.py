"""Code that runs inside a served bundle.

This package is copied verbatim into every bento as ``nbdeploy_runtime`` so that
stock ``bentoml serve`` can run the bundle on a machine without nbdeploy.  It may
import only the standard library, numpy and onnxruntime at module level; shap is
imported lazily by the explanation code.  It must never import from ``nbdeploy``.
"""
