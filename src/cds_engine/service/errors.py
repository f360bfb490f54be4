"""Error answers: an OperationOutcome that names the field, and nothing of the patient's data.

CDS Hooks 2.0 only says "other 4xx MAY be returned"; the 3.0 ballot asks for an
OperationOutcome body, which 2.0 clients ignore harmlessly. The ``expression`` names the element
(``context.patientId``); the message never echoes the submitted value, so an error response or
log line cannot leak a name or a birth date. FastAPI's default 422 for invalid bodies becomes the
400 that CDS Hooks practice expects.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exception_handlers import http_exception_handler
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

__all__ = ["HookError", "install_error_handlers", "outcome"]

log = logging.getLogger("cds_engine.service")

_CODES = {400: "invalid", 401: "security", 404: "not-found", 412: "not-found", 413: "too-costly",
          415: "not-supported"}
# the JSON API (CDS Hooks and /evaluate); the review pages keep FastAPI's own error answers
API_PREFIXES = ("/cds-services", "/evaluate")


def _is_api(request: Request) -> bool:
    path = request.url.path
    return any(path == p or path.startswith(p + "/") for p in API_PREFIXES)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


class HookError(Exception):
    """A request we cannot answer with cards: status code, the element at fault, and why."""

    def __init__(self, status: int, field: str | None, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.field = field
        self.message = message


def outcome(status: int, field: str | None, message: str) -> JSONResponse:
    issue: dict[str, object] = {
        "severity": "error",
        "code": _CODES.get(status, "processing"),
        "diagnostics": f"{field}: {message}" if field else message,
    }
    if field:
        issue["expression"] = [field]
    return JSONResponse({"resourceType": "OperationOutcome", "issue": [issue]}, status_code=status)


def _field(loc: tuple[int | str, ...]) -> str:
    parts = [p for p in loc if p != "body"]
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "body"


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(HookError)
    async def _hook_error(request: Request, exc: HookError) -> JSONResponse:
        request.state.error_field = exc.field
        return outcome(exc.status, exc.field, exc.message)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        # e.g. FastAPI's 400 for a body it could not parse (JSON nested deeper than the parser's
        # recursion limit): an OperationOutcome on the API like every other error there
        if _is_api(request) and 400 <= exc.status_code < 500 and exc.status_code != 401:
            answer = outcome(exc.status_code, None, str(exc.detail))
            answer.headers.update(exc.headers or {})  # e.g. Allow on a 405
            return answer
        return await http_exception_handler(request, exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        if (
            _is_api(request)
            and request.method == "POST"
            and not _is_json(request.headers.get("content-type", ""))
        ):
            return outcome(415, None, "send the request body as application/json")
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        loc = tuple(first.get("loc", ("body",)))
        message = str(first.get("msg", "invalid"))
        if first.get("type") == "json_invalid":
            return outcome(400, "body", "not valid JSON")
        field = _field(loc)
        request.state.error_field = field
        return outcome(400, field, message)
