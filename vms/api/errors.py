"""Turn service errors into HTTP answers with a `detail` a person can read."""

from __future__ import annotations

from typing import Any

from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import exception_handler as drf_exception_handler

from vms.services.consoles import DisplayUnreachable, TooManyConsoles
from vms.services.core.errors import (
    HostCannotTake,
    InvalidTransition,
    NetworkInUse,
    NoHostAvailable,
    NotAssigned,
    QuotaExceeded,
    ServiceError,
    ServiceUnavailable,
)

STATUS_OF: dict[type[ServiceError], int] = {
    TooManyConsoles: status.HTTP_429_TOO_MANY_REQUESTS,
    DisplayUnreachable: status.HTTP_503_SERVICE_UNAVAILABLE,
    QuotaExceeded: status.HTTP_409_CONFLICT,
    InvalidTransition: status.HTTP_409_CONFLICT,
    HostCannotTake: status.HTTP_409_CONFLICT,
    NetworkInUse: status.HTTP_409_CONFLICT,
    NotAssigned: status.HTTP_403_FORBIDDEN,
    NoHostAvailable: status.HTTP_503_SERVICE_UNAVAILABLE,
    ServiceUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}


def exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler, plus our ServiceError family."""
    if isinstance(exc, ServiceError):
        code = STATUS_OF.get(type(exc), status.HTTP_400_BAD_REQUEST)
        body: dict[str, Any] = {"detail": exc.message}
        if isinstance(exc, QuotaExceeded):
            body["limit"] = exc.limit
        return Response(body, status=code)
    return drf_exception_handler(exc, context)
