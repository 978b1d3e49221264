"""Bearer-token authentication and the role matrix (DESIGN 5.4).

`service` appends; `officer` can do all a service can and also reveals, handles requests,
restricts, places holds and erases; `auditor` reads history, reports and proofs, never
plaintext, and appends nothing; `admin` manages tokens and nothing else.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Final

from fastapi import Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from starlette.concurrency import run_in_threadpool

from ledger.api.errors import ApiError
from ledger.api.tokens import Token, TokenStore

# What each permission needs; the routes name permissions, never roles.
PERMISSIONS: Final[dict[str, frozenset[str]]] = {
    "append": frozenset({"service", "officer"}),
    "officer_command": frozenset({"officer"}),
    "find": frozenset({"service", "officer"}),
    "read_subject": frozenset({"officer", "auditor"}),
    "reveal": frozenset({"officer"}),
    "history": frozenset({"officer", "auditor"}),
    "export": frozenset({"officer"}),
    "requests": frozenset({"officer", "auditor"}),
    "reports": frozenset({"officer", "auditor"}),
    "audit": frozenset({"officer", "auditor"}),
    "tokens": frozenset({"admin"}),
}

bearer = HTTPBearer(auto_error=False, description="A token from `ledger token create`.")
UNAUTHORIZED_HEADERS: Final = {"WWW-Authenticate": "Bearer"}


@dataclass(frozen=True)
class Principal:
    """Who sends the request: the token's name is the actor of what it writes."""

    name: str
    role: str

    def may(self, permission: str) -> bool:
        return self.role in PERMISSIONS[permission]

    def require(self, permission: str) -> None:
        if not self.may(permission):
            raise ApiError(403, "forbidden", f"the role '{self.role}' may not do this")


def _unauthorized(message: str) -> ApiError:
    return ApiError(401, "unauthorized", message)


async def _token(request: Request) -> Token | None:
    """The live token the request carries; None if its token is unknown or revoked.
    Raises 401 when there is no bearer token at all."""
    scheme, _, credentials = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not credentials.strip():
        raise _unauthorized("a bearer token is required")
    store: TokenStore = request.app.state.tokens
    known, token = store.cached(credentials.strip())
    if not known:
        token = await run_in_threadpool(store.authenticate, credentials.strip())
    return token


async def caller(request: Request) -> Principal | None:
    """Who sends the request, if it carries a live token (any role); for answers that say
    more to a known caller and need no token."""
    try:
        token = await _token(request)
    except ApiError:
        return None
    return None if token is None else Principal(name=token.name, role=token.role)


async def authenticate(request: Request, permission: str) -> Principal:
    """The caller of this request, if its bearer token is live and its role may do this."""
    token = await _token(request)
    if token is None:
        raise _unauthorized("the token is not valid (unknown or revoked)")
    principal = Principal(name=token.name, role=token.role)
    request.state.actor = principal.name
    principal.require(permission)
    return principal


def requires(permission: str) -> Callable[..., Awaitable[Principal]]:
    """A dependency: a valid token whose role has this permission (documented in OpenAPI)."""

    async def dependency(
        request: Request,
        credentials: HTTPAuthorizationCredentials | None = Security(bearer),  # noqa: B008
    ) -> Principal:
        return await authenticate(request, permission)

    dependency.__name__ = f"requires_{permission}"
    return dependency
