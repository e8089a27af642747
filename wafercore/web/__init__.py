"""What the HTTP APIs of the edge node, the fab server and the cloud share: one error shape
(`errors`), body limits (`limits`), deadlines for receiving a request (`protocol`) and API docs
served from local files (`docs`).

Every tier with an HTTP API imports this package: it needs FastAPI, uvicorn and httptools, which
each of their extras installs.
"""

from wafercore.web.docs import mount_docs
from wafercore.web.errors import (
    ErrorItem,
    ErrorResponse,
    error_body,
    error_response,
    error_responses,
    install_error_handlers,
)
from wafercore.web.limits import BodyLimit, BodyTooLarge
from wafercore.web.protocol import MAX_HEADER_BYTES, DeadlineHttpToolsProtocol, deadline_protocol

__all__ = [
    "MAX_HEADER_BYTES",
    "BodyLimit",
    "BodyTooLarge",
    "DeadlineHttpToolsProtocol",
    "ErrorItem",
    "ErrorResponse",
    "deadline_protocol",
    "error_body",
    "error_response",
    "error_responses",
    "install_error_handlers",
    "mount_docs",
]
