"""Jupyter server extension: REST routes under ``/nbdeploy/`` for the JupyterLab sidebar.

Importing this package is cheap; BentoML loads only when a route needs it.
"""

from __future__ import annotations


def _jupyter_server_extension_points():
    return [{"module": "nbdeploy.server"}]


def _load_jupyter_server_extension(serverapp) -> None:
    from .handlers import setup_handlers

    setup_handlers(serverapp.web_app, log=serverapp.log)
    serverapp.log.info("nbdeploy server extension loaded: REST API under %snbdeploy/",
                       serverapp.web_app.settings["base_url"])


# the name jupyter_server < 2 / notebook looked for
load_jupyter_server_extension = _load_jupyter_server_extension
