"""One error shape for every response: `{"error": "<code>", "detail": "<sentence>"}`."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Awaitable, Callable

from aiohttp import web

log = logging.getLogger(__name__)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ApiError(Exception):
    """An expected failure with a status, a stable machine code and a human sentence."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code
        self.detail = detail


def bad_request(code: str, detail: str) -> ApiError:
    return ApiError(400, code, detail)


def not_found(what: str) -> ApiError:
    return ApiError(404, "not_found", f"No {what} with that id exists.")


def ingest_failed(journal_id: int | None) -> ApiError:
    """The payload is journaled, so it can be replayed, but could not be stored."""
    return ApiError(
        500,
        "ingest_failed",
        f"The payload is kept as journal entry {journal_id} but could not be stored.",
    )


def error_response(status: int, code: str, detail: str, **extra: str) -> web.Response:
    return web.json_response({"error": code, "detail": detail, **extra}, status=status)


_HTTP_CODES = {
    400: ("bad_request", "The request could not be understood."),
    401: ("unauthorized", "Authentication is required."),
    403: ("forbidden", "You may not do this."),
    404: ("not_found", "There is nothing at this address."),
    405: ("method_not_allowed", "This address does not take that method."),
    413: ("payload_too_large", "The request body is larger than this server accepts."),
}


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    try:
        return await handler(request)
    except ApiError as error:
        return error_response(error.status, error.code, error.detail)
    except web.HTTPException as error:
        if error.status < 400:
            raise
        code, detail = _HTTP_CODES.get(error.status, ("http_error", error.reason))
        response = error_response(error.status, code, detail)
        if error.status == 405 and "Allow" in error.headers:
            response.headers["Allow"] = error.headers["Allow"]
        return response
    except Exception:
        request_id = secrets.token_hex(8)
        log.exception(
            "unhandled error in %s %s [request %s]", request.method, request.path, request_id
        )
        return error_response(
            500,
            "internal_error",
            "Something went wrong on our side; the request id helps the administrator find it.",
            request_id=request_id,
        )
