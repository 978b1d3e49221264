"""HTTP statuses for the contract's error codes, and the one error body shape."""

from __future__ import annotations

import sqlite3
from typing import Any, Final

import orjson
import psycopg
from eventsourcing.persistence import PersistenceError
from starlette.responses import Response

from ledger.errors import LedgerError

NOT_FOUND: Final = frozenset(
    {"unknown_subject", "unknown_request", "unknown_agreement", "unknown_hold"}
)
STATUS: Final[dict[str, int]] = {
    "invalid_command": 400,
    "unauthorized": 401,
    "forbidden": 403,
    "conflict": 409,
    "duplicate": 409,
    **dict.fromkeys(NOT_FOUND, 404),
}
RULE_BROKEN: Final = 422  # every other code: the command breaks a rule of the policy


class JSONResponse(Response):
    """orjson-encoded JSON (events hold plain JSON values; dates are already strings)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def status_for(code: str) -> int:
    return STATUS.get(code, RULE_BROKEN)


class ApiError(Exception):
    """A rejection with an HTTP status of its own (401, 403, 413, 501, 503 ...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.error = LedgerError(code, message)
        self.status = status

    @classmethod
    def of(cls, error: LedgerError) -> ApiError:
        return cls(status_for(error.code), error.code, error.message)


def error_body(code: str, message: str) -> dict[str, Any]:
    return {"ok": False, "error": {"code": code, "message": message}}


def error_response(
    status: int, code: str, message: str, headers: dict[str, str] | None = None
) -> JSONResponse:
    return JSONResponse(error_body(code, message), status_code=status, headers=headers)


def result_response(result: dict[str, Any]) -> JSONResponse:
    """A command result: 200 when ok, else the status of its error code."""
    if result.get("ok"):
        return JSONResponse(result)
    return JSONResponse(result, status_code=status_for(result["error"]["code"]))


#: What a failing database raises: the request's work was not written (503, retry).
DATABASE_ERRORS: Final[tuple[type[Exception], ...]] = (
    PersistenceError,
    sqlite3.Error,
    psycopg.Error,
)
