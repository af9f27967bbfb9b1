"""``%deploy``: the IPython line magic (``%load_ext nbdeploy``).

Parses the line, resolves names (or expressions such as ``X_test[:100]``) in the user's
namespace, and calls the public API.  In a Jupyter kernel it shows the live widget; in terminal
IPython it prints one plain line per finished step.  Every mistake -- unknown flag, a name that
is not defined, a sample that doesn't fit the model -- prints a one-line message with a hint and
the magic returns ``None``; ``%deploy traceback`` shows the full traceback of the last failure.
"""

from __future__ import annotations

import argparse
import difflib
import sys
import time
import traceback
from typing import Any

from IPython.core.magic import Magics, line_magic, magics_class

from .errors import NbdeployError
from .vocab import QUANTIZE_CHOICES

SUBCOMMANDS = ("list", "status", "stop", "logs", "traceback", "last", "score")

EXAMPLES = """\
examples:
  %deploy model --sample X_test
      convert, verify, benchmark, quantize, explain and bundle `model`
  d = %deploy model --sample X_test[:200] --labels y_test[:200] --name churn --serve
      ... and serve it; `d` is the Deployment (d.server.url, d.predict(X), d.stop())
  %deploy model --sample X_test --quantize none --explain none --serve --port 3000
  %deploy model --sample X_test --push registry.example.com/team/churn:1.0
  %deploy model --sample X_test --push registry.internal:5000/churn:1 --base registry.internal:5000/python:3.11-slim
      ... on a base image from a registry reachable from here (air-gapped setups)
  %deploy list                 bundles in the store and running servers
  %deploy status churn         versions of `churn` and its servers
  %deploy logs churn --tail 50 the last lines of its server log
  %deploy stop churn           stop its server(s)
  scores = %deploy score churn df --explain
      score a DataFrame (or a file path) with a bundle: predictions, probabilities, SHAP
  %deploy traceback            full traceback of the last failed %deploy
  d = %deploy last             the Deployment of the last %deploy (even a failed one)
"""

DESCRIPTION = """\
Turn a model in this notebook into a verified ONNX model, benchmark and quantize it, explain it,
and build a BentoML bundle (served by stock `bentoml serve`).  MODEL, --sample and --labels are
names or Python expressions from the notebook (no spaces outside brackets: X_test[:100],
df[["a", "b"]]).  Returns the Deployment."""


class ArgumentError(NbdeployError):
    """A mistake in the %deploy line (shown as one line + hint, never as a traceback)."""


class _HelpShown(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of exiting, so a typo is a message, not a SystemExit."""

    def error(self, message: str):  # type: ignore[override]
        hint = "See %deploy --help for every flag with examples."
        if "unrecognized arguments" in message:
            bad = message.split(":", 1)[1].split()
            bad = [b for b in bad if b.startswith("-")] or bad
            flags = [s for a in self._actions for s in a.option_strings]
            near = [m for b in bad if b.startswith("-")
                    for m in difflib.get_close_matches(b.split("=")[0], flags, n=1, cutoff=0.5)]
            message = f"Unknown argument{'s' if len(bad) > 1 else ''} {' '.join(bad)}."
            if near:
                hint = f"Did you mean {' or '.join(dict.fromkeys(near))}? " + hint
        elif "the following arguments are required" in message:
            message = f"missing {message.split(':', 1)[1].strip()}."
            hint = f"Usage: %{self.format_usage().split(':', 1)[1].strip().lstrip('%')}"
        else:
            message = message[:1].upper() + message[1:] + ("" if message.endswith(".") else ".")
        raise ArgumentError(f"%{self.prog}: {message}", hint=hint)

    def exit(self, status: int = 0, message: str | None = None):  # type: ignore[override]
        if message:
            self.error(message)
        raise _HelpShown()


def build_parser() -> _Parser:
    p = _Parser(prog="deploy", description=DESCRIPTION, epilog=EXAMPLES, allow_abbrev=False,
                formatter_class=argparse.RawDescriptionHelpFormatter,
                usage="%%deploy MODEL --sample X [options]  |  %%deploy {list,status,stop,logs} [NAME]")
    p.add_argument("model", metavar="MODEL",
                   help="the trained model (sklearn, XGBoost, LightGBM, PyTorch) or an .onnx path")
    p.add_argument("--sample", "-s", metavar="X",
                   help="a few hundred rows of real input (ndarray or DataFrame), e.g. X_test[:200]")
    p.add_argument("--labels", "-y", metavar="Y",
                   help="true targets for the sample, for accuracy numbers, e.g. y_test[:200]")
    p.add_argument("--name", "-n", help="bundle name (default: from the model's class), e.g. churn")
    p.add_argument("--task", choices=("classifier", "regressor"),
                   help="override the detected task")
    p.add_argument("--quantize", "-q", default="auto", choices=QUANTIZE_CHOICES, metavar="MODE",
                   help="auto (default: the fastest variant within tolerance), none, int8-dynamic, "
                        "int8-static or fp16")
    p.add_argument("--explain", "-e", default="shap,lime", metavar="METHODS",
                   help="shap,lime (default), shap, lime, tree, permutation or none")
    p.add_argument("--preprocess", metavar="EXPR", default=None,
                   help="image models: an nbdeploy.ImagePreprocess from the notebook (name or expression)")
    p.add_argument("--tokenizer", metavar="TOK", default=None,
                   help="text models: the transformers tokenizer from the notebook (name or expression)")
    p.add_argument("--class-names", metavar="EXPR", default=None,
                   help="classifiers: the names of outputs 0..k-1 (a list or an id2label dict from the "
                        "notebook); /predict answers with them")
    p.add_argument("--budget", type=float, default=None, metavar="SECONDS",
                   help="time budget of the benchmark step (default 20), e.g. --budget 5")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), metavar="DEVICE",
                   help="where the bundle runs: cpu (default) or cuda")
    p.add_argument("--serve", action="store_true",
                   help="start a local server after building (stop it with %%deploy stop NAME)")
    p.add_argument("--port", "-p", type=int, metavar="N",
                   help="port for --serve (default: a free one); implies --serve")
    p.add_argument("--auth", choices=("key", "oidc"), default=None, metavar="MODE",
                   help="with --serve: require an API key (key: from `nbdeploy keys`) or an OIDC "
                        "token (oidc: $NBDEPLOY_OIDC_ISSUER/AUDIENCE) as Authorization: Bearer")
    p.add_argument("--push", metavar="REF",
                   help="push an OCI image to REF after building, e.g. registry.example.com/me/churn:1.0")
    p.add_argument("--base", metavar="IMAGE",
                   help="base image (with Python 3.11) for --push, e.g. a mirror: --base "
                        "registry.internal:5000/python:3.11-slim (default: $NBDEPLOY_BASE_IMAGE, "
                        "else python:3.11-slim from Docker Hub)")
    p.add_argument("--text", action="store_true",
                   help="plain text progress instead of the widget (automatic outside Jupyter)")
    p.add_argument("--widget", action="store_true", help=argparse.SUPPRESS)
    return p


def build_sub_parser(command: str) -> _Parser:
    p = _Parser(prog=f"deploy {command}", allow_abbrev=False)
    if command in ("status", "stop", "logs"):
        p.add_argument("name", metavar="NAME", help="bundle name, tag or server id")
    if command == "list":
        p.add_argument("name", metavar="NAME", nargs="?", help="only this bundle's versions")
    if command == "logs":
        p.add_argument("--tail", type=int, default=100, metavar="N", help="last N lines (default 100)")
    if command == "score":
        p.add_argument("name", metavar="NAME", help="bundle name or tag")
        p.add_argument("data", metavar="DATAFRAME", help="a DataFrame, an array or a file path (expression)")
        p.add_argument("--explain", action="store_true", help="add SHAP columns")
        p.add_argument("--batch-size", type=int, default=None, metavar="N", help="rows per chunk")
        p.add_argument("--output", "-o", metavar="PATH", help="write .parquet/.csv instead of returning")
    return p


HELP = build_parser().format_help()


def split_line(line: str) -> list[str]:
    """Split at whitespace outside quotes and brackets, keeping each token's text verbatim."""
    tokens: list[str] = []
    buf: list[str] = []
    depth, quote, escaped = 0, None, False
    for ch in line:
        if quote:
            buf.append(ch)
            if escaped:
                escaped = False
            elif ch == "\\":
                escaped = True
            elif ch == quote:
                quote = None
        elif ch in "'\"":
            quote = ch
            buf.append(ch)
        elif ch in "([{":
            depth += 1
            buf.append(ch)
        elif ch in ")]}":
            depth -= 1
            buf.append(ch)
        elif ch.isspace() and depth <= 0:
            if buf:
                tokens.append("".join(buf))
                buf = []
        else:
            buf.append(ch)
    if quote or depth > 0:
        raise ArgumentError(f"%deploy: unbalanced {'quote' if quote else 'bracket'} in {line.strip()!r}.",
                            hint="Close every quote and bracket, or put the value in a variable first.")
    if buf:
        tokens.append("".join(buf))
    return tokens


def _unquote(s: str | None) -> str | None:
    if s and len(s) >= 2 and s[0] == s[-1] and s[0] in "'\"":
        return s[1:-1]
    return s


def one_line(err: BaseException) -> str:
    """``nbdeploy: <message> Hint: <hint>`` on one line."""
    message = getattr(err, "message", None) or f"{type(err).__name__}: {err}"
    message = " ".join(message.split())   # server logs etc. must not break the one line
    if len(message) > 400:
        message = message[:400] + "…"
    hint = getattr(err, "hint", None)
    prefix = "" if message.startswith("%deploy") else "nbdeploy: "
    return f"{prefix}{message}" + (f" Hint: {' '.join(hint.split())}" if hint else "")


class TextProgress:
    """Plain text progress for terminals: one line per finished step, throttled progress."""

    def __init__(self, stream=None, every_s: float = 2.0):
        self.stream = stream
        self.every_s = every_s
        self._last: dict[str, float] = {}

    def __call__(self, ev: Any) -> None:
        out = self.stream or sys.stdout
        if ev.state == "running":
            if ev.fraction is None:
                return
            now = time.monotonic()
            if now - self._last.get(ev.step, 0.0) < self.every_s:
                return
            self._last[ev.step] = now
            print(f"  … {ev.step:<9} {ev.fraction * 100:3.0f}%  {ev.summary}", file=out, flush=True)
            return
        if ev.state == "pending":
            return
        mark = {"done": "✔", "failed": "✘", "skipped": "–"}.get(ev.state, "?")
        took = f"{ev.elapsed_s:6.2f}s" if ev.state != "skipped" else " " * 7
        summary = ev.summary.splitlines()[0] if ev.summary else ""
        print(f"  {mark} {ev.step:<9} {took}  {summary}", file=out, flush=True)


def _fits(value: Any, what: str) -> bool:
    """Could ``value`` be the model (has predict/forward) or the data (has a shape)?"""
    if isinstance(value, type):
        return False
    if what == "model":
        return callable(getattr(value, "predict", None)) or callable(getattr(value, "forward", None))
    return hasattr(value, "shape") and hasattr(value, "__len__")


def _check_port(port: int, host: str = "127.0.0.1") -> None:
    import socket

    if not 0 < port < 65536:
        raise ArgumentError(f"%deploy: --port {port} is not a TCP port.",
                            hint="Use 1-65535, or leave --port out to get a free one.")
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError as exc:
            raise ArgumentError(f"%deploy: port {port} is already in use ({exc.strerror}).",
                                hint="Leave --port out to get a free one; %deploy list shows the "
                                     "servers nbdeploy runs.") from exc


def _has_widget_frontend(shell) -> bool:
    """True inside a Jupyter kernel (widgets have a frontend); False in terminal IPython."""
    if getattr(shell, "kernel", None) is None:
        return False
    try:
        import ipywidgets  # noqa: F401
    except ImportError:
        return False
    return True


@magics_class
class DeployMagics(Magics):
    """The ``%deploy`` magic.  ``last``/``last_error``/``last_widget`` keep the latest run."""

    def __init__(self, shell=None, **kwargs):
        super().__init__(shell=shell, **kwargs)
        self.last = None             # the last Deployment (also a failed one)
        self.last_error: BaseException | None = None
        self.last_traceback: str | None = None
        self.last_widget = None
        self.deployments: list = []  # the ones made here, so `%deploy stop` updates their views

    @line_magic
    def deploy(self, line: str = ""):
        try:
            return self._dispatch(line)
        except _HelpShown:
            return None
        except KeyboardInterrupt:
            print("nbdeploy: interrupted.", file=sys.stderr)
            return None
        except Exception as exc:  # noqa: BLE001 - the whole point: no raw traceback in the notebook
            self.last_error = exc
            tb = getattr(self.last, "error_traceback", None) if isinstance(exc, NbdeployError) \
                and getattr(self.last, "error", None) is exc else None
            self.last_traceback = tb or traceback.format_exc()
            if not isinstance(exc, NbdeployError):
                exc = NbdeployError(f"unexpected {type(exc).__name__}: {exc}",
                                    hint="`%deploy traceback` shows where; please report it.")
            print(one_line(exc), file=sys.stderr, flush=True)
            return None

    deploy.__doc__ = HELP

    # -- dispatch --------------------------------------------------------------------------------
    def _dispatch(self, line: str):
        tokens = split_line(line)
        if not tokens:
            raise ArgumentError("%deploy: nothing to deploy.",
                                hint="Use %deploy model --sample X_test (see %deploy --help).")
        head = tokens[0]
        if head in SUBCOMMANDS and head not in self.shell.user_ns:
            args = build_sub_parser(head).parse_args(tokens[1:])
            return getattr(self, f"_cmd_{head}")(args)
        args = build_parser().parse_args(tokens)
        if args.sample is None:   # checked here so a misspelt --sampel is reported as such
            self._resolve(args.model, "model")   # an undefined model first: the fix below needs it
            raise ArgumentError("%deploy: --sample is required.",
                                hint=f"Pass a few hundred rows of real input: %deploy {args.model} "
                                     "--sample X_test")
        return self._deploy(args)

    def _resolve(self, expr: str, what: str) -> Any:
        ns = self.shell.user_ns
        if expr.isidentifier():
            if expr in ns:
                return ns[expr]
            raise self._undefined(expr, what)
        try:
            return self.shell.ev(expr)
        except NameError as exc:
            raise self._undefined(getattr(exc, "name", None) or expr, what, expr) from exc
        except SyntaxError as exc:
            raise ArgumentError(f"%deploy: cannot read {what} {expr!r} as Python.",
                                hint="Write it without spaces outside brackets, or assign it to a "
                                     "variable first.") from exc
        except Exception as exc:
            raise ArgumentError(f"%deploy: evaluating {what} {expr!r} failed: "
                                f"{type(exc).__name__}: {exc}",
                                hint="Check the expression in a cell of its own first.") from exc

    def _undefined(self, name: str, what: str, expr: str | None = None) -> ArgumentError:
        hidden = getattr(self.shell, "user_ns_hidden", {})
        names = [k for k in self.shell.user_ns if not k.startswith("_") and k not in hidden]
        near = difflib.get_close_matches(name, names, n=3)
        if near:
            hint = f"Did you mean {', '.join(near)}? Run the cell that defines it first."
        else:   # nothing close: list what would fit here
            fits = [k for k in names if _fits(self.shell.user_ns[k], what)][:8]
            hint = "Run the cell that defines it first." + (
                f" Candidates in the notebook: {', '.join(fits)}." if fits else "")
        where = f" (in {expr!r})" if expr and expr != name else ""
        return ArgumentError(f"%deploy: {what} {name!r}{where} is not defined in the notebook.",
                             hint=hint)

    # -- %deploy MODEL --sample X ----------------------------------------------------------------
    def _deploy(self, args: argparse.Namespace):
        from .pipeline import Deployment

        if args.base and not args.push:
            raise ArgumentError("%deploy: --base only applies to --push.",
                                hint="Add --push REF, e.g. --push registry.example.com/team/churn:1.0 "
                                     f"--base {args.base}")
        push_ref, base = _unquote(args.push), _unquote(args.base)
        if push_ref:   # a malformed reference fails here, not after a minute of building
            from .oci import Reference

            for ref in (push_ref, base):
                if ref:
                    Reference.parse(ref)
        if args.port is not None:
            _check_port(args.port)   # before building, not after a minute of work
        if args.auth and not (args.serve or args.port):
            raise ArgumentError("%deploy: --auth applies to the local server.",
                                hint=f"Add --serve, e.g. %deploy model --sample X --serve --auth {args.auth}")
        if args.auth:
            from .serve import auth_env

            auth_env(args.auth)      # oidc without its settings fails here, before building
        model = self._resolve(args.model, "model")
        sample = self._resolve(args.sample, "--sample")
        labels = self._resolve(args.labels, "--labels") if args.labels else None
        d = Deployment(model, sample, labels=labels, name=_unquote(args.name), task=args.task,
                       quantize=args.quantize, explain=_unquote(args.explain), device=args.device,
                       **({"benchmark_budget_s": args.budget} if args.budget is not None else {}),
                       **({"preprocess": self._resolve(args.preprocess, "--preprocess")}
                          if args.preprocess else {}),
                       **({"tokenizer": self._resolve(args.tokenizer, "--tokenizer")}
                          if args.tokenizer else {}),
                       **({"class_names": self._resolve(args.class_names, "--class-names")}
                          if args.class_names else {}))
        self.last = d
        self.last_widget = None
        self.deployments.append(d)
        view = handle = None
        if args.widget or (not args.text and _has_widget_frontend(self.shell)):
            from IPython.display import display

            from .widget import DeployWidget

            view = DeployWidget(d)
            self.last_widget = view
            d.shown_in_cell = getattr(self.shell, "execution_count", None)
            handle = display(view, display_id=True)
        else:
            d.add_listener(TextProgress())
            print(f"nbdeploy: deploying {d.name} …", flush=True)
        try:
            d.run()
            if args.serve or args.port:
                if args.auth == "key":
                    import os

                    from . import keys

                    if not keys.list_keys():  # never printed: a notebook's outputs get saved
                        os.environ["NBDEPLOY_API_KEY"] = keys.create("default")
                        print("nbdeploy: created API key 'default'; this session has it in "
                              "os.environ['NBDEPLOY_API_KEY'] (`nbdeploy keys` manages keys)", flush=True)
                d.serve(port=args.port, **({"auth": args.auth} if args.auth else {}))
            if push_ref:
                d.push(push_ref, base=base)   # base None: $NBDEPLOY_BASE_IMAGE, else the default
        finally:
            if view is not None:
                view.refresh()
                if handle is not None:   # the saved output then carries the finished report
                    handle.update(view)
        if view is None:
            if getattr(d.converted, "is_table", False):
                from .schema import describe_columns

                print(f"nbdeploy: columns: {describe_columns(d.converted.columns)}", flush=True)
            print(f"nbdeploy: built {d.tag}" + (f", serving at {d.server.url}"
                                                if d.server is not None else ""), flush=True)
        return d

    # -- subcommands -----------------------------------------------------------------------------
    def _cmd_list(self, args) -> None:
        from .listing import list_tables

        _show(list_tables(_unquote(args.name), build_hint="%deploy model --sample X_test"))

    def _cmd_status(self, args) -> None:
        from .listing import status_tables
        from .store import list_bundles

        name = _unquote(args.name)
        tables = status_tables(name)
        if tables is None:
            known = sorted({b.name for b in list_bundles()})
            raise ArgumentError(f"%deploy status: no bundle or server named {name!r}.",
                                hint=f"Known bundles: {', '.join(known) or 'none'} "
                                     "(%deploy list shows everything).")
        _show(tables)

    def _cmd_stop(self, args) -> None:
        from .errors import NotFoundError
        from .serve import stop

        name = _unquote(args.name)
        stopped = []
        for d in self.deployments:   # through the Deployment, so its widget shows the change
            s = getattr(d, "server", None)
            if s is not None and s.is_alive() and name in (s.id, s.tag, s.name):
                d.stop()
                stopped.append(s)
        try:
            stopped.extend(stop(name))
        except NotFoundError:
            if not stopped:
                raise
        for h in stopped:
            print(f"stopped {h.id} ({h.url})")

    def _cmd_logs(self, args) -> None:
        from .serve import require

        servers = require(_unquote(args.name))
        for h in servers:
            if len(servers) > 1:
                print(f"==> {h.id} <==")
            print(h.logs(tail=args.tail))

    def _cmd_score(self, args):
        from .scoring import score

        data = self._resolve(args.data, "data")
        return score(_unquote(args.name), data, output=_unquote(args.output), explain=args.explain,
                     batch_size=args.batch_size, progress=True)

    def _cmd_traceback(self, args) -> None:
        print(self.last_traceback or "No %deploy has failed in this session.")

    def _cmd_last(self, args):
        if self.last is None:
            raise ArgumentError("%deploy last: nothing deployed in this session yet.",
                                hint="Run %deploy model --sample X_test first.")
        return self.last


def _show(tables) -> None:
    """A listing as an HTML table in Jupyter (fits a narrow pane), as text in a terminal."""
    from IPython.display import display

    from .listing import mimebundle

    display(mimebundle(tables), raw=True)


def _display_deployment(shell):
    """Show a Deployment as its live widget in Jupyter -- once per cell: the cell that ran
    ``%deploy`` already shows it, so its Out[] stays empty instead of repeating it."""

    def show(d) -> None:
        if d.shown_in_cell == getattr(shell, "execution_count", -1):
            return
        from IPython.display import display

        from .widget import widget_for

        d.shown_in_cell = getattr(shell, "execution_count", None)
        display(widget_for(d))

    return show


def load_ipython_extension(ipython) -> None:
    """Register ``%deploy`` (and, inside Jupyter, the widget as a Deployment's display)."""
    ipython.register_magics(DeployMagics)
    if _has_widget_frontend(ipython):
        ipython.display_formatter.ipython_display_formatter.for_type_by_name(
            "nbdeploy.pipeline", "Deployment", _display_deployment(ipython))


def unload_ipython_extension(ipython) -> None:
    try:
        ipython.display_formatter.ipython_display_formatter.pop("nbdeploy.pipeline.Deployment", None)
    except Exception:
        pass
