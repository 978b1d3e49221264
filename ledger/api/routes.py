"""The endpoints of DESIGN 5.4.

Writes (commands, reveals, exports) go to the process's writer thread; reads run in the
thread pool, since the event store and key store are synchronous.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime
from typing import Any, Final, TypeVar

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import HTMLResponse, PlainTextResponse, Response

from ledger.api.auth import Principal, authenticate, caller, requires
from ledger.api.errors import ApiError, JSONResponse, error_body, result_response, status_for
from ledger.api.executor import GroupCommitExecutor
from ledger.api.openapi import (
    MAX_BATCH,
    commands_request_body,
    error_responses,
    token_request_body,
)
from ledger.api.tokens import TokenStore
from ledger.clock import RANGE, parse_instant
from ledger.commands import OFFICER_COMMANDS
from ledger.errors import LedgerError
from ledger.facade import Ledger

T = TypeVar("T")
COMMANDS_PATH: Final = "/v1/commands"
RETRIES: Final = 8
SUBJECT_ID = Path(description="The subject's id (a UUID).")

router = APIRouter()


# -- helpers ------------------------------------------------------------------------------


def _ledger(request: Request) -> Ledger:
    ledger: Ledger = request.app.state.ledger
    return ledger


def _executor(request: Request) -> GroupCommitExecutor:
    executor: GroupCommitExecutor = request.app.state.executor
    return executor


async def _read(call: Callable[[], T]) -> T:
    """Run a synchronous read in the thread pool; a `LedgerError` becomes its HTTP error."""
    try:
        return await run_in_threadpool(call)
    except LedgerError as error:
        raise ApiError.of(error) from None


async def _write(request: Request, call: Callable[[], T]) -> T:
    """Run a write alone on the writer thread; retried if another process got there first."""

    def attempt() -> T:
        from eventsourcing.persistence import IntegrityError

        for _ in range(RETRIES):
            try:
                return call()
            except IntegrityError:
                continue
        raise LedgerError("conflict", "the subject kept changing; retry")

    try:
        return await asyncio.wrap_future(_executor(request).submit_job(attempt))
    except LedgerError as error:
        raise ApiError.of(error) from None


# Types a JSON body arrives with besides application/json: `curl -d` sends a form type,
# and some clients send text. Every request needs a bearer token, which no web page can
# add to a cross-site form post, so taking them opens nothing; refusing them would fail
# callers who write JSON with the tools' defaults.
_TAKEN_AS_JSON = ("application/x-www-form-urlencoded", "text/plain")


def _is_json(content_type: str) -> bool:
    """application/json, a JSON-based type (application/...+json), or a type clients send
    JSON with by default (`_TAKEN_AS_JSON`); parameters aside."""
    media = content_type.partition(";")[0].strip().lower()
    kind, _, subtype = media.partition("/")
    if media in _TAKEN_AS_JSON:
        return True
    return kind == "application" and (subtype == "json" or subtype.endswith("+json"))


async def _body(request: Request) -> Any:
    """The JSON body, within the size limit: 413 past it, 400 if it is not JSON, 415 if it
    is sent as a type that cannot be one (multipart, an image ...). A body without a
    Content-Type is taken as JSON."""
    content_type = request.headers.get("content-type")
    if content_type is not None and not _is_json(content_type):
        raise ApiError(
            415, "invalid_command", "the body must be sent as Content-Type: application/json"
        )
    limit: int = request.app.state.options.body_limit
    too_large = ApiError(413, "invalid_command", f"the body is larger than {limit} bytes")
    declared = request.headers.get("content-length")
    if declared is not None and (not declared.isdigit() or int(declared) > limit):
        raise too_large
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise ApiError(400, "invalid_command", "the body is not JSON") from None


def _as_command(data: Any, principal: Principal) -> Any:
    """The command with the token's name as its actor; officer commands need an officer."""
    if not isinstance(data, dict):
        return data  # the parser rejects it as invalid_command
    if data.get("type") in OFFICER_COMMANDS and not principal.may("officer_command"):
        raise ApiError(403, "forbidden", f"only an officer may send '{data['type']}'")
    return {**data, "actor": principal.name}


MAX_INDEX = 2**63 - 1  # tree sizes and leaf indexes are 64-bit (RFC 9162)


def _now(value: str | None) -> datetime | None:
    if value is None:
        return None
    try:
        return parse_instant(value)
    except ValueError:
        raise ApiError(
            400, "invalid_command", f"'now' must be an RFC 3339 time or a date, {RANGE}"
        ) from None


def _ok(payload: dict[str, Any]) -> JSONResponse:
    return JSONResponse({"ok": True, **payload})


# -- commands -----------------------------------------------------------------------------


@router.post(
    COMMANDS_PATH,
    tags=["commands"],
    summary="Execute one command, or a batch in one transaction",
    openapi_extra={
        "requestBody": commands_request_body(),
        "security": [{"HTTPBearer": []}],
    },
    responses={
        200: {"description": "The result: `{ok: true, ...}`; a batch adds `results`."},
        **error_responses(
            400,
            413,
            415,
            say={
                400: "invalid_command: the command does not fit its schema, or the body is "
                "not JSON or not an object",
                403: "forbidden: the role may not send this command type (or append at all)",
                404: "unknown_subject, unknown_request, unknown_agreement, unknown_hold",
                409: "conflict (concurrent writers; retry), duplicate (already registered, or "
                "an idempotency key reused with another payload)",
                422: "the command breaks a rule of the policy (the code says which); a "
                "rejected batch adds `results`",
                503: "conflict: the database failed; nothing of this group was written; retry",
            },
        ),
    },
)
async def post_commands(request: Request) -> Response:
    """One command object (group commit), or `{"commands": [...]}` (one atomic transaction).

    The actor of every command is the token's name, whatever the body says. The hottest
    path of the service: it authenticates without FastAPI's dependency machinery.
    """
    principal = await authenticate(request, "append")
    executor = _executor(request)
    executor.arriving(1)
    counted = True
    try:
        body = await _body(request)
        if isinstance(body, dict) and "commands" in body and "type" not in body:
            executor.arriving(-1)
            counted = False
            return await _batch(request, body, principal)
        command = _as_command(body, principal)
        counted = False  # submit counts this request out, even when it refuses it
        result: dict[str, Any] = await executor.submit(command, arrived=True)
        return result_response(result)
    finally:
        if counted:
            executor.arriving(-1)


async def _batch(request: Request, body: dict[str, Any], principal: Principal) -> Response:
    items = body["commands"]
    if set(body) != {"commands"}:
        raise ApiError(400, "invalid_command", "a batch has only the field 'commands'")
    if not isinstance(items, list) or not items:
        raise ApiError(400, "invalid_command", "field 'commands' must be a non-empty list")
    if len(items) > MAX_BATCH:
        raise ApiError(400, "invalid_command", f"a batch holds at most {MAX_BATCH} commands")
    commands = [_as_command(item, principal) for item in items]
    ledger = _ledger(request)
    results = await _write(request, lambda: ledger.execute_many(commands))
    if all(r["ok"] for r in results):
        return JSONResponse({"ok": True, "results": results})
    first = next(r for r in results if not r["ok"] and not r.get("rolled_back"))
    code = first["error"]["code"]
    return JSONResponse(
        {**error_body(code, first["error"]["message"]), "results": results},
        status_code=status_for(code),
    )


# -- subjects -----------------------------------------------------------------------------


@router.get(
    "/v1/subjects/{subject_id}",
    tags=["subjects"],
    summary="A subject's current state",
    responses=error_responses(
        400,
        404,
        409,
        say={
            400: "invalid_command: a reveal without a purpose (or one holding an identifier), "
            "or a parameter the service does not take",
            403: "forbidden: the role may not read subjects, or may not reveal",
            409: "conflict: a reveal met concurrent writers; retry",
        },
    ),
)
async def get_subject(
    request: Request,
    subject_id: str = SUBJECT_ID,
    reveal: bool = Query(False, description="Decrypt values (officer; recorded as DataViewed)."),
    purpose: str | None = Query(None, description="Why the values are revealed (needed)."),
    principal: Principal = Depends(requires("read_subject")),  # noqa: B008
) -> Response:
    """The shape of `ledger subject show --json`; values are null unless revealed."""
    ledger = _ledger(request)
    if not reveal:
        return _ok(await _read(lambda: ledger.subject(subject_id)))
    principal.require("reveal")
    if not purpose or not purpose.strip():
        raise ApiError(400, "invalid_command", "revealing personal data needs a purpose")
    view = await _write(
        request,
        lambda: ledger.subject(subject_id, reveal=True, purpose=purpose, actor=principal.name),
    )
    return _ok(view)


@router.get(
    "/v1/subjects",
    tags=["subjects"],
    summary="Find subjects by an identifier",
    responses=error_responses(
        400, say={400: "invalid_command: not exactly one identifier, or not a valid one"}
    ),
)
async def find_subjects(
    request: Request,
    email: str | None = Query(None),
    cpr: str | None = Query(None),
    phone: str | None = Query(None),
    customer_number: str | None = Query(None),
    _: Principal = Depends(requires("find")),  # noqa: B008
) -> Response:
    """Exactly one identifier; matched through the keyed-hash index, never stored in clear."""
    given = {
        kind: value
        for kind, value in (
            ("email", email),
            ("cpr", cpr),
            ("phone", phone),
            ("customer_number", customer_number),
        )
        if value is not None
    }
    if len(given) != 1:
        raise ApiError(
            400, "invalid_command", "give exactly one of: email, cpr, phone, customer_number"
        )
    ((kind, value),) = given.items()
    ledger = _ledger(request)
    return _ok({"subjects": await _read(lambda: ledger.find(kind, value))})


@router.get(
    "/v1/subjects/{subject_id}/history",
    tags=["subjects"],
    summary="A subject's events",
    responses=error_responses(404),
)
async def get_history(
    request: Request,
    subject_id: str = SUBJECT_ID,
    _: Principal = Depends(requires("history")),  # noqa: B008
) -> Response:
    """Metadata of every event of the subject, oldest first, without any value."""
    ledger = _ledger(request)
    events = await _read(lambda: ledger.history(subject_id))
    return _ok({"subject": subject_id, "events": events})


@router.get(
    "/v1/subjects/{subject_id}/export",
    tags=["subjects"],
    summary="The subject's own copy (Art. 15 access answer, or Art. 20 portable data)",
    responses=error_responses(
        400, 404, 409, say={409: "conflict: the export met concurrent writers; retry"}
    ),
)
async def get_export(
    request: Request,
    subject_id: str = SUBJECT_ID,
    portable: bool = Query(False, description="The Art. 20 export instead of Art. 15."),
    format: str = Query("json", pattern="^(json|html)$", description="json or html."),
    principal: Principal = Depends(requires("export")),  # noqa: B008
) -> Response:
    """Values in the clear, for an officer answering a request; recorded as a view."""
    ledger = _ledger(request)
    document = await _write(
        request, lambda: ledger.export(subject_id, portable=portable, actor=principal.name)
    )
    if format == "html":
        from ledger.exports import render_html

        return HTMLResponse(render_html(document))
    return _ok(document)


# -- requests and reports -----------------------------------------------------------------


@router.get(
    "/v1/requests",
    tags=["requests"],
    summary="Data subject requests and deadlines",
    responses=error_responses(400),
)
async def get_requests(
    request: Request,
    overdue: bool = Query(False, description="Only requests past their due date."),
    now: str | None = Query(None, description="As of this time (RFC 3339); default now."),
    _: Principal = Depends(requires("requests")),  # noqa: B008
) -> Response:
    ledger = _ledger(request)
    moment = _now(now)
    return _ok({"requests": await _read(lambda: ledger.requests(overdue=overdue, now=moment))})


@router.get(
    "/v1/reports/{name}",
    tags=["reports"],
    summary="A compliance report",
    responses=error_responses(
        400, say={400: "invalid_command: an unknown report or format, or a bad `now`"}
    ),
)
async def get_report(
    request: Request,
    name: str = Path(description="ropa, retention, consent, disclosures, requests, compliance"),
    now: str | None = Query(None, description="As of this time (RFC 3339); default now."),
    format: str = Query("json", pattern="^(json|md|html)$", description="json, md or html."),
    _: Principal = Depends(requires("reports")),  # noqa: B008
) -> Response:
    """From the read models (caught up first); never a personal value."""
    from ledger.reports import produce

    ledger = _ledger(request)
    moment = _now(now)
    output = await _read(
        lambda: produce(ledger.read_models, name, now=moment or ledger.clock.now(), fmt=format)
    )
    if format == "html":
        return HTMLResponse(output)
    if format == "md":
        return PlainTextResponse(output, media_type="text/markdown; charset=utf-8")
    return _ok(output if isinstance(output, dict) else {"report": output})


# -- audit --------------------------------------------------------------------------------


@router.get(
    "/v1/audit/checkpoint",
    tags=["audit"],
    summary="The latest signed checkpoint",
    responses=error_responses(),
)
async def get_checkpoint(
    request: Request,
    _: Principal = Depends(requires("audit")),  # noqa: B008
) -> Response:
    """The C2SP signed note with its size and root, and the key to check it with.

    Events recorded before the request are sealed first (if the background work has not
    done so yet), so the checkpoint covers them.
    """
    from ledger.audit.service import latest_checkpoint, seal_up_to_date

    ledger = _ledger(request)

    def answer() -> dict[str, Any]:
        seal_up_to_date(ledger)
        return latest_checkpoint(ledger)

    return _ok(await _read(answer))


@router.get(
    "/v1/audit/proof",
    tags=["audit"],
    summary="An inclusion or consistency proof",
    responses=error_responses(
        400,
        404,
        say={
            400: "invalid_command: not exactly one of subject, leaf or first; a leaf or size "
            "the log does not have; a size that is not the size of a signed checkpoint",
            404: "unknown_subject",
        },
    ),
)
async def get_proof(
    request: Request,
    subject: str | None = Query(None, description="Inclusion proofs of a subject's events."),
    leaf: int | None = Query(
        None, ge=0, le=MAX_INDEX, description="Inclusion proof of one leaf index."
    ),
    first: int | None = Query(
        None, ge=0, le=MAX_INDEX, description="Consistency proof from this size."
    ),
    size: int | None = Query(
        None, ge=0, le=MAX_INDEX, description="The tree size (default: the latest)."
    ),
    _: Principal = Depends(requires("audit")),  # noqa: B008
) -> Response:
    """Exactly one of `subject`, `leaf` or `first`, against the checkpoint of `size` (by
    default the latest, which covers every event recorded before the request)."""
    from ledger.audit.service import proof, seal_up_to_date

    ledger = _ledger(request)

    def answer() -> dict[str, Any]:
        seal_up_to_date(ledger)
        if size is not None:
            _check_size(ledger, size, leaf)
        return proof(ledger, subject=subject, leaf=leaf, first=first, size=size)

    return _ok(await _read(answer))


def _check_size(ledger: Ledger, size: int, leaf: int | None) -> None:
    """Say what is wrong with `size` (the log itself once said "no checkpoint yet")."""
    from ledger.audit.service import audit_log
    from ledger.audit.store import AuditError

    if leaf is not None and leaf >= size:
        raise LedgerError(
            "invalid_command",
            f"leaf {leaf} is not in a tree of {size} leaves (leaf indexes count from 0)",
        )
    try:
        audit_log(ledger).checkpoint(size)
    except AuditError:
        raise LedgerError(
            "invalid_command",
            f"no signed checkpoint has size {size}: give the tree_size of a checkpoint "
            "(GET /v1/audit/checkpoint has the latest), or leave size out for the latest",
        ) from None


# -- tokens (admin) -----------------------------------------------------------------------


def _tokens(request: Request) -> TokenStore:
    store: TokenStore = request.app.state.tokens
    return store


@router.get(
    "/v1/tokens",
    tags=["tokens"],
    summary="Every token (never the token itself)",
    responses=error_responses(),
)
async def list_tokens(
    request: Request,
    _: Principal = Depends(requires("tokens")),  # noqa: B008
) -> Response:
    store = _tokens(request)
    tokens = await _read(store.all)
    return _ok({"tokens": [t.to_dict() for t in tokens]})


@router.post(
    "/v1/tokens",
    tags=["tokens"],
    summary="Create a token (shown once)",
    openapi_extra={"requestBody": token_request_body()},
    responses=error_responses(
        400,
        413,
        415,
        say={
            400: "invalid_command: not exactly role and name, an unknown role, or a name "
            "that is not a plain identifier or holds an e-mail address, CPR or phone number"
        },
    ),
)
async def create_token(
    request: Request,
    _: Principal = Depends(requires("tokens")),  # noqa: B008
) -> Response:
    """Body `{"role": ..., "name": ...}`; the answer holds the token, which is never shown again."""
    body = await _body(request)
    if not isinstance(body, dict) or set(body) != {"role", "name"}:
        raise ApiError(400, "invalid_command", "a token needs exactly the fields 'role' and 'name'")
    role, name = body["role"], body["name"]
    if not isinstance(role, str) or not isinstance(name, str):
        raise ApiError(400, "invalid_command", "'role' and 'name' must be strings")
    store = _tokens(request)
    token, record = await _read(lambda: store.create(role, name))
    return _ok({"token": token, **record.to_dict()})


@router.delete(
    "/v1/tokens/{token}",
    tags=["tokens"],
    summary="Revoke a token by id or name",
    responses=error_responses(
        404, say={404: "invalid_command: no live token with this id or name"}
    ),
)
async def revoke_token(
    request: Request,
    token: str = Path(description="The token's id, or a name (revokes all its live tokens)."),
    _: Principal = Depends(requires("tokens")),  # noqa: B008
) -> Response:
    store = _tokens(request)
    revoked = await _read(lambda: store.revoke(token))
    if not revoked:
        raise ApiError(404, "invalid_command", "no live token with this id or name")
    return _ok({"revoked": [t.to_dict() for t in revoked]})


# -- health -------------------------------------------------------------------------------


@router.get(
    "/healthz",
    tags=["health"],
    summary="Liveness and database reachability",
    responses=error_responses(public=True),
)
async def healthz(request: Request) -> Response:
    """No token needed for `{"status": "ok"}`. The counters (events, groups, commands) tell
    how much the ledger holds and does, so only a caller with a live token sees them."""
    ledger = _ledger(request)
    position = await run_in_threadpool(ledger.max_position)  # the database answers
    if await caller(request) is None:
        return _ok({"status": "ok"})
    executor = _executor(request)
    return _ok(
        {
            "status": "ok",
            "position": position,
            "group_commit": executor.group_commit,
            "groups": executor.groups,
            "commands": executor.commands,
        }
    )
