"""The words nbdeploy's front ends share: step names, quantization choices, explanation methods.

Defined once here; the pipeline, the widget, the magics, the CLI, the server extension and the
checks that validate options import them rather than restate them.
"""

from __future__ import annotations

# The steps of a deployment, in the order they run (pipeline.Deployment, widget rows, CLI, REST).
STEPS = ("detect", "convert", "verify", "benchmark", "quantize", "explain", "bundle", "serve", "push")

# Quantized variants nbdeploy can build, and what `quantize=` accepts.
VARIANTS = ("int8-dynamic", "int8-static", "fp16")
QUANTIZE_CHOICES = ("auto", "none", *VARIANTS)

# Explanation methods a deployment can ship, and the SHAP algorithm names that select "shap"
# with a given algorithm ("auto" = TreeSHAP for tree ensembles, model-agnostic otherwise).
EXPLAIN_METHODS = ("shap", "lime")
SHAP_MODES = {"shap": "auto", "tree": "tree", "treeshap": "tree", "permutation": "agnostic",
              "kernel": "agnostic", "agnostic": "agnostic", "exact": "agnostic"}
