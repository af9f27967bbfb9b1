"""The words nbdeploy's front ends share: step names, quantization choices, explanation methods.

Defined once here; the pipeline, the widget, the magics, the CLI, the server extension and the
checks that validate options import them rather than restate them.
"""

from __future__ import annotations

from typing import Any

from .errors import InvalidInputError

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
#: every word ``explain=`` accepts besides "none": a SHAP algorithm name, or "lime"
EXPLAIN_CHOICES = (*SHAP_MODES, "lime")

_EXPLAIN_HINT = ("Use 'shap' (TreeSHAP for tree ensembles, model-agnostic otherwise), 'tree', "
                 "'permutation', 'lime', a comma-separated mix such as 'shap,lime', or 'none'.")


def parse_explain(value: Any) -> tuple[str, ...]:
    """The explanation methods asked for, checked: lower-cased, in order, without repeats.

    ``value`` is a comma-separated string ("shap,lime", "tree") or a sequence of names; None,
    False, "", "none" or an empty sequence mean no explanation and give ``()``.  Raises
    InvalidInputError for an unknown name or for two different SHAP algorithms at once.
    """
    if value is None or value is False:
        return ()
    items = value.split(",") if isinstance(value, str) else list(value)
    methods = tuple(dict.fromkeys(str(i).strip().lower() for i in items if str(i).strip()))
    if methods == ("none",):
        return ()
    unknown = [m for m in methods if m not in EXPLAIN_CHOICES]
    if unknown:
        raise InvalidInputError(f"Unknown explanation method(s) {unknown}.", hint=_EXPLAIN_HINT,
                                expected=list(EXPLAIN_CHOICES) + ["none"], received=unknown)
    shap_mode(methods)   # one SHAP algorithm at a time
    return methods


def shap_mode(methods: tuple[str, ...] | list[str]) -> str:
    """The SHAP algorithm ``methods`` select: "auto", "tree" or "agnostic"."""
    modes = {SHAP_MODES[m] for m in methods if m in SHAP_MODES}
    if len(modes) > 1:
        modes.discard("auto")      # "shap" beside "tree" means tree
    if len(modes) > 1:
        raise InvalidInputError("Ask for one SHAP algorithm at a time ('tree' or 'permutation').",
                                hint=_EXPLAIN_HINT, received=list(methods))
    return modes.pop() if modes else "auto"


def check_quantize(value: Any) -> str:
    """``value`` if it is one of QUANTIZE_CHOICES; InvalidInputError otherwise."""
    if value not in QUANTIZE_CHOICES:
        raise InvalidInputError(f"Unknown quantize option {value!r}.",
                                hint=f"Use one of {', '.join(QUANTIZE_CHOICES)}.",
                                expected=list(QUANTIZE_CHOICES), received=value)
    return value
