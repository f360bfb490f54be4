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
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

__all__ = ["HookError", "install_error_handlers", "outcome"]

log = logging.getLogger("cds_engine.service")

_CODES = {400: "invalid", 401: "security", 404: "not-found", 412: "not-found", 413: "too-costly"}


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

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": ("body",), "msg": "invalid request"}
        loc = tuple(first.get("loc", ("body",)))
        message = str(first.get("msg", "invalid"))
        if first.get("type") == "json_invalid":
            return outcome(400, "body", "not valid JSON")
        field = _field(loc)
        request.state.error_field = field
        return outcome(400, field, message)
