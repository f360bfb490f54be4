"""Request bodies parsed by msgspec, with the standard library deciding every case it is unsure of.

Parsing the JSON body was about a tenth of a worker's CPU per hook call (issue 19 profile):
``json.loads`` builds the same dicts, lists and numbers several times slower than msgspec. The
answer must not change, so msgspec only ever *accepts*: whatever it refuses — ``NaN`` and
``Infinity``, numbers beyond the float range, lone surrogates (escaped or UTF-8 encoded), a BOM,
UTF-16/32 bodies, invalid UTF-8, any syntax error — is parsed again by ``json.loads``, which
then accepts it or raises exactly as before (same exception, message and position). Where both
accept, they build equal values (duplicate names: the last wins; integers of any size; floats
correctly rounded), checked in the tests.

Nesting depth: both parsers give up at the interpreter's recursion limit, counted from the call
site. msgspec is entered :data:`_DEPTH_MARGIN` frames deeper than ``json.loads`` would be, so it
gives up first; the stdlib then decides (a ``RecursionError`` as before), never msgspec alone.
"""

from __future__ import annotations

import asyncio
import inspect
import json
from collections.abc import Callable, Coroutine
from typing import Any

import msgspec
from fastapi import Request, Response
from fastapi.routing import APIRoute
from starlette._utils import is_async_callable

__all__ = ["FastJsonRequest", "FastJsonRoute"]

# frames between this module's json() and msgspec's C decoder beyond those of json.loads (its own
# three: loads, decode, raw_decode): msgspec's limit is then a few levels *below* the stdlib's
_DEPTH_MARGIN = 8
_decode = msgspec.json.decode


def _deeper(body: bytes, frames: int) -> Any:
    """msgspec's decode, ``frames`` Python frames further down (see the module docstring)."""
    return _deeper(body, frames - 1) if frames else _decode(body)


class FastJsonRequest(Request):
    """A request whose ``json()`` is msgspec's when it accepts, else ``json.loads``'s own verdict
    (cached like Starlette's).

    ``parsed_by_msgspec`` says msgspec accepted the body: then it is UTF-8 and every number in it
    is finite, which :func:`cds_engine.service.bounds.scrub_may_change` relies on.

    ``json.loads`` is called from this frame, as Starlette calls it from its own ``json()``, so a
    body the stdlib decides meets the recursion limit where it always did.
    """

    parsed_by_msgspec = False

    async def json(self) -> Any:
        if not hasattr(self, "_json"):
            body = await self.body()
            try:
                self._json = _deeper(body, _DEPTH_MARGIN)
                self.parsed_by_msgspec = True  # UTF-8, every number finite (bounds.scrub_may_change)
            except Exception:  # any refusal (or a RecursionError): the stdlib decides
                self._json = json.loads(body)
        return self._json


class FastJsonRoute(APIRoute):
    """An API route that parses JSON bodies with :class:`FastJsonRequest`; nothing else differs.

    The request is swapped by a plain function returning the handler's coroutine, marked as a
    coroutine function: an ``async def`` wrapper would stay on the stack as one more frame, and the
    stdlib's recursion limit (a body nested ~990 deep) would then trip one level earlier.
    """

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        def parse_fast(request: Request) -> Coroutine[Any, Any, Response]:
            return handler(FastJsonRequest(request.scope, request.receive, request._send))

        marked = _as_coroutine_function(parse_fast)
        if is_async_callable(marked):
            return marked

        async def parse_fast_async(request: Request) -> Response:  # should the mark not be honoured
            return await handler(FastJsonRequest(request.scope, request.receive, request._send))

        return parse_fast_async


def _as_coroutine_function(func: Callable[..., Any]) -> Any:
    """``func`` (it returns a coroutine) marked so that Starlette awaits it rather than thread it."""
    mark = getattr(inspect, "markcoroutinefunction", None)  # Python 3.12+
    if mark is not None:
        return mark(func)
    func._is_coroutine = asyncio.coroutines._is_coroutine  # type: ignore[attr-defined]  # Python 3.11
    return func
