"""The FastAPI application: its life cycle, error bodies, access log and OpenAPI document.

`create_app` is for tests and embedding; `app_from_env` is the factory `ledger serve` hands
to uvicorn, so every worker process builds its own application from the environment.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable, MutableMapping
from contextlib import asynccontextmanager
from typing import Any, Final

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.utils import get_openapi
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute

from ledger.api.auth import UNAUTHORIZED_HEADERS
from ledger.api.background import BackgroundWorker
from ledger.api.errors import DATABASE_ERRORS, ApiError, error_response
from ledger.api.executor import ExecutorStopped, GroupCommitExecutor
from ledger.api.openapi import finish
from ledger.api.opening import open_ledger
from ledger.api.options import ServerOptions
from ledger.api.routes import COMMANDS_PATH, post_commands, router
from ledger.api.tokens import TokenStore
from ledger.clock import Clock
from ledger.config import Settings
from ledger.errors import LedgerError
from ledger.logs import get_logger

log = get_logger("ledger.http")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

DESCRIPTION = """\
The personal data ledger of CEKURA A/S over HTTP. Every request but `/healthz` and this
document needs `Authorization: Bearer <token>` (`ledger token create --role ROLE --name NAME`).
Bodies are JSON, best sent as `Content-Type: application/json` (a body without one, or
sent as a form or text as tools do by default, is read as JSON too; multipart is 415).
Every error, whatever its status, is `{"ok": false, "error": {"code", "message"}}` (schema
`Error`); see docs/http.md. Answers are sent with `Cache-Control: no-store`.
"""

NO_STORE: Final = (b"cache-control", b"no-store")


DOCUMENT_PATHS: Final = frozenset({"/openapi.json", "/docs", "/docs/oauth2-redirect"})


class LedgerAPI(FastAPI):
    """FastAPI, with one JSON access line per request and a short road for appends.

    `POST /v1/commands`, the hottest endpoint, is served in front of FastAPI's middleware
    stack (its error, telemetry and body-limit middleware, the router): the same handler,
    which enforces the ledger's own body limit, and the same exception handlers, without
    the layers that cost a tenth of a command's CPU. An unexpected exception is answered
    with 500 and raised again, as Starlette does, so that uvicorn logs its traceback. The
    FastAPI route stays registered, for the OpenAPI document and for nothing else.
    """

    commands_route: BaseRoute | None = None  # its documented twin, set by `create_app`

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await super().__call__(scope, receive, send)
        elif scope["path"] == COMMANDS_PATH and scope["method"] == "POST":
            await self._logged(scope, receive, send, self._commands)
        else:
            await self._logged(scope, receive, send, super().__call__)

    async def _commands(self, scope: Scope, receive: Receive, send: Send) -> None:
        scope["app"] = self
        scope["route"] = self.commands_route  # the access log's path template
        request = Request(scope, receive)
        try:
            response = await post_commands(request)
        except Exception as exc:
            kind, handler = self._handler_for(exc)
            outcome = handler(request, exc)
            response = await outcome if inspect.isawaitable(outcome) else outcome
            await response(scope, receive, send)
            if kind is Exception:
                raise  # unexpected: as Starlette does, so that uvicorn logs the traceback
            return
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> tuple[type[BaseException], Any]:
        """The most specific of the application's exception handlers for `exc`."""
        for kind in type(exc).__mro__:
            handler = self.exception_handlers.get(kind)
            if handler is not None:
                return kind, handler
        raise exc  # pragma: no cover - a handler for Exception is always installed

    @staticmethod
    async def _logged(scope: Scope, receive: Receive, send: Send, app: ASGIApp) -> None:
        """Run `app` and log the request: method, route template, status, duration, actor.

        Never the concrete path's query string nor a body: an e-mail in `?email=` stays out
        of the logs. Unmatched paths are logged as `<unmatched>`. Every answer but the API
        document's is sent with `Cache-Control: no-store`: reveals and exports carry
        plaintext, and no answer of the ledger is for a shared or browser cache to keep.
        """
        started = time.perf_counter()
        status = 500
        no_store = scope["path"] not in DOCUMENT_PATHS

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
                if no_store:
                    message["headers"] = [*message.get("headers", ()), NO_STORE]
            await send(message)

        try:
            await app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            state = scope.get("state") or {}
            log.info(
                "http_request",
                method=scope["method"],
                path=getattr(route, "path", None) or "<unmatched>",
                status=status,
                duration_ms=round((time.perf_counter() - started) * 1000, 3),
                actor=state.get("actor"),
            )


def create_app(
    settings: Settings | None = None,
    options: ServerOptions | None = None,
    *,
    clock: Clock | None = None,
) -> LedgerAPI:
    """An application serving the ledger `settings` describe (default: the environment)."""
    settings = settings or Settings.from_env()
    options = options or ServerOptions()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        ledger = open_ledger(settings, clock=clock)
        tokens = TokenStore.open(settings, cache_seconds=options.token_cache_seconds)
        executor = GroupCommitExecutor(
            ledger,
            group_commit=options.group_commit,
            max_batch=options.group_max,
            max_wait=options.group_wait_ms / 1000,
        )
        background = BackgroundWorker(
            lambda: open_ledger(settings, clock=clock),
            tick=options.tick,
            sweep_every=options.sweep_every,
        )
        app.state.ledger = ledger
        app.state.tokens = tokens
        app.state.executor = executor
        app.state.options = options
        app.state.background = background
        executor.start()
        if options.tick > 0:
            background.start()
        log.info(
            "server_started",
            group_commit=options.group_commit,
            sweep_every=options.sweep_every,
            backend=settings.database.backend,
        )
        try:
            yield
        finally:
            # uvicorn has waited for in-flight requests; finish what is queued, then close.
            background.stop()
            executor.stop()
            tokens.close()
            ledger.close()
            log.info("server_stopped", groups=executor.groups, commands=executor.commands)

    app = LedgerAPI(
        title="Personal data ledger",
        version="1",
        description=DESCRIPTION,
        lifespan=lifespan,
        docs_url="/docs",
        redoc_url=None,
    )
    app.include_router(router)
    app.commands_route = next(r for r in router.routes if getattr(r, "path", "") == COMMANDS_PATH)
    _install_error_handlers(app)
    _install_openapi(app)
    return app


def app_from_env() -> LedgerAPI:
    """The uvicorn factory of `ledger serve`: settings and options from the environment."""
    return create_app(Settings.from_env(), ServerOptions.from_env())


def _install_error_handlers(app: FastAPI) -> None:
    async def api_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, ApiError)
        headers = UNAUTHORIZED_HEADERS if exc.status == 401 else None
        return error_response(exc.status, exc.error.code, exc.error.message, headers)

    async def ledger_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, LedgerError)
        api = ApiError.of(exc)
        return error_response(api.status, exc.code, exc.message)

    async def validation_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, RequestValidationError)
        names = sorted(
            {
                ".".join(str(p) for p in e.get("loc", ()) if p not in ("query", "path", "body"))
                for e in exc.errors()
            }
        )
        # Name the parameter, never its value: a query may hold an e-mail.
        return error_response(400, "invalid_command", f"invalid parameters: {', '.join(names)}")

    async def http_error(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, StarletteHTTPException)
        message = {404: "no such endpoint", 405: "method not allowed"}.get(
            exc.status_code, "bad request"
        )
        return error_response(exc.status_code, "invalid_command", message)

    async def stopped(request: Request, exc: Exception) -> Response:
        return error_response(503, "conflict", "the server is shutting down; retry")

    async def database_error(request: Request, exc: Exception) -> Response:
        log.error("database_error", error=type(exc).__name__, path=_template(request))
        return error_response(
            503, "conflict", "the database failed; nothing of this request was written; retry"
        )

    async def internal_error(request: Request, exc: Exception) -> Response:
        log.error("internal_error", error=type(exc).__name__, path=_template(request))
        return error_response(500, "conflict", "internal error (logged); retry or report it")

    app.add_exception_handler(ApiError, api_error)
    app.add_exception_handler(LedgerError, ledger_error)
    app.add_exception_handler(RequestValidationError, validation_error)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(ExecutorStopped, stopped)
    for kind in DATABASE_ERRORS:
        app.add_exception_handler(kind, database_error)
    app.add_exception_handler(Exception, internal_error)


def _template(request: Request) -> str:
    route = request.scope.get("route")
    return str(getattr(route, "path", "<unmatched>"))


def _install_openapi(app: FastAPI) -> None:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = finish(
                get_openapi(
                    title=app.title,
                    version=app.version,
                    description=app.description,
                    routes=app.routes,
                )
            )
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
