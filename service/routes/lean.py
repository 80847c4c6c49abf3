"""A route that calls its endpoint with the request and the path parameters, nothing else.

FastAPI's handler solves the endpoint's dependencies and, for a declared ``response_model``, runs the
answer through it, on every request. The search routes need neither: they read their body by hand
(``service.wire``), fetch the app's objects through the same ``service.deps`` accessors the
dependencies use, and write their answer themselves. Their signatures, ``response_model`` and
``openapi_extra`` still make their OpenAPI operations, as for any ``APIRoute``; errors still reach the
app's exception handlers (``request_response`` wraps the handler as for any route).
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import Request, Response
from fastapi.routing import APIRoute


class LeanRoute(APIRoute):
    """An ``APIRoute`` whose endpoint is ``async def endpoint(request, **path_params) -> Response``."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        endpoint = self.endpoint

        async def handle(request: Request) -> Response:
            response: Response = await endpoint(request, **request.path_params)
            return response

        return handle
