"""The HTTP routes of `wavekv serve` (FastAPI), over one replica's ServerCore.

/v1/completions, /v1/chat/completions (whole or streamed as server-sent events), /v1/models,
/health, /metrics (every replica's worker metrics, merged). Errors are OpenAI-shaped JSON with
the right status: 400 for a bad request (naming the field), 404 for an unknown model or route,
500 when generation fails.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response, StreamingResponse
from starlette.exceptions import HTTPException

from inference_worker.serve.protocol import ApiError, ChatCompletionRequest, CompletionRequest
from inference_worker.serve.server import ServerCore

PROMETHEUS_TEXT = "text/plain; version=0.0.4; charset=utf-8"


def build_api(
    core: ServerCore,
    metrics_text: Callable[[], Awaitable[bytes]],
    healthy: Callable[[], bool],
) -> FastAPI:
    api = FastAPI(title="wavekv serve", docs_url=None, redoc_url=None)

    @api.exception_handler(ApiError)
    async def api_error(request: Request, err: ApiError) -> JSONResponse:
        return JSONResponse(err.body(), status_code=err.status)

    @api.exception_handler(RequestValidationError)
    async def invalid(request: Request, err: RequestValidationError) -> JSONResponse:
        return _error(_validation_error(err))

    @api.exception_handler(HTTPException)
    async def http_error(request: Request, err: HTTPException) -> JSONResponse:
        kind = "not_found_error" if err.status_code == 404 else "invalid_request_error"
        return _error(ApiError(err.status_code, str(err.detail), kind=kind))

    @api.post("/v1/completions")
    async def completions(body: CompletionRequest) -> Response:
        prepared = core.prepare_completion(body)
        if body.stream:
            return StreamingResponse(await core.stream(prepared), media_type="text/event-stream")
        return JSONResponse(await core.respond(prepared))

    @api.post("/v1/chat/completions")
    async def chat(body: ChatCompletionRequest) -> Response:
        prepared = core.prepare_chat(body)
        if body.stream:
            return StreamingResponse(await core.stream(prepared), media_type="text/event-stream")
        return JSONResponse(await core.respond(prepared))

    @api.get("/v1/models")
    async def models() -> dict[str, Any]:
        return core.models()

    @api.get("/health")
    async def health() -> Response:
        if not healthy():
            return _error(ApiError(503, "the engine loop is not running", kind="server_error"))
        return JSONResponse({"status": "ok", "model": core.card.name})

    @api.get("/metrics")
    async def metrics() -> Response:
        return PlainTextResponse(await metrics_text(), media_type=PROMETHEUS_TEXT)

    return api


def _error(err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status)


def _validation_error(err: RequestValidationError) -> ApiError:
    """pydantic's first complaint as an OpenAI 400 naming the field and the value."""
    first = err.errors()[0]
    loc = [str(part) for part in first.get("loc", ()) if part != "body"]
    param = ".".join(loc) or None
    value = first.get("input")
    shown = "" if value is None or isinstance(value, dict | list) else f"={value!r}"
    if first.get("type") == "json_invalid":
        return ApiError(400, f"the body is not valid JSON: {first.get('msg')}")
    message = f"{param or 'body'}{shown}: {first.get('msg')}"
    return ApiError(400, message, param)
