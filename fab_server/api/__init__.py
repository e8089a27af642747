"""The fab server's HTTP API (FastAPI); build it with :func:`create_app`."""

from fab_server.api.app import create_app

__all__ = ["create_app"]
