"""The OpenAPI document against the real server, on SQLite and PostgreSQL.

Every route documents the statuses it really answers with and the one error body it sends
(FastAPI's `422 HTTPValidationError` was documented on every GET route while the server
answered 400 with `{"ok": false, "error": ...}`), and the command schemas accept and refuse
what the parser accepts and refuses.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

import httpx
import pytest

from ledger.api.openapi import EXAMPLES
from ledger.commands import COMMANDS, COMMON, parse_command
from ledger.errors import LedgerError
from tests.test_api_support import Served, api_backend, register, served

__all__ = ["api_backend", "served"]  # fixtures used by this module


# -- a small JSON Schema checker (the keywords the document uses) ---------------------------


def _is(kind: str, value: Any) -> bool:
    return {
        "null": value is None,
        "boolean": isinstance(value, bool),
        "integer": isinstance(value, int) and not isinstance(value, bool),
        "number": isinstance(value, int | float) and not isinstance(value, bool),
        "string": isinstance(value, str),
        "array": isinstance(value, list),
        "object": isinstance(value, dict),
    }[kind]


def _same(a: Any, b: Any) -> bool:
    return type(a) is type(b) and a == b


def valid(schema: dict[str, Any], value: Any, root: dict[str, Any]) -> bool:
    """Whether `value` fits `schema` (a subset of JSON Schema 2020-12; formats are notes)."""
    if "$ref" in schema:
        target: Any = root
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        return valid(target, value, root)
    kinds = schema.get("type", [])
    kinds = kinds if isinstance(kinds, list) else [kinds]
    if kinds and not any(_is(k, value) for k in kinds):
        return False
    if "const" in schema and not _same(value, schema["const"]):
        return False
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        return False
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", 1e9):
            return False
        if "pattern" in schema and not re.search(schema["pattern"], value):
            return False
    if isinstance(value, list):
        if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", 1e9):
            return False
        if "items" in schema and not all(valid(schema["items"], v, root) for v in value):
            return False
    if isinstance(value, dict):
        if not schema.get("minProperties", 0) <= len(value) <= schema.get("maxProperties", 1e9):
            return False
        if any(name not in value for name in schema.get("required", ())):
            return False
        properties = schema.get("properties", {})
        if schema.get("additionalProperties") is False and set(value) - set(properties):
            return False
        for name, item in value.items():
            if name in properties and not valid(properties[name], item, root):
                return False
    if "anyOf" in schema and not any(valid(s, value, root) for s in schema["anyOf"]):
        return False
    if "oneOf" in schema and sum(valid(s, value, root) for s in schema["oneOf"]) != 1:
        return False
    return not ("not" in schema and valid(schema["not"], value, root))


# -- fixtures ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def document(served: Served) -> dict[str, Any]:
    with served.client() as client:
        answer = client.get("/openapi.json")
    assert answer.status_code == 200
    result: dict[str, Any] = answer.json()
    return result


@pytest.fixture(scope="module")
def subject(served: Served) -> str:
    with served.client("officer") as client:
        return register(client)


# -- every route's documented answers against the server's -----------------------------------

UNKNOWN = str(uuid.uuid4())
TOO_LARGE = b"x" * (1024 * 1024 + 10)
NOT_JSON = {"Content-Type": "image/png"}  # a type that cannot hold JSON


def _cases(subject: str) -> list[tuple[str, str, str, str | None, dict[str, Any], int]]:
    """(method, route, path, role, request arguments, the status the server answers)."""
    dialogue = {"type": "record_dialogue", "subject": subject}
    registered = {
        "type": "register_subject",
        "subject": subject,
        "kind": "customer",
        "purpose": "customer_administration",
        "legal_basis": "contract",
    }
    marketing = {
        "type": "process",
        "subject": subject,
        "purpose": "marketing",
        "activity": "sms_offer",
        "channel": "sms",
    }
    token = {"role": "service", "name": "openapi-made"}
    s = f"/v1/subjects/{subject}"
    cases: list[tuple[str, str, str, str | None, dict[str, Any], int]] = [
        ("post", "/v1/commands", "/v1/commands", "service", {"json": {"type": "nope"}}, 400),
        ("post", "/v1/commands", "/v1/commands", "service", {"json": [1]}, 400),
        (
            "post",
            "/v1/commands",
            "/v1/commands",
            "service",
            {"json": {**dialogue, "subject": UNKNOWN}},
            404,
        ),
        ("post", "/v1/commands", "/v1/commands", "service", {"json": registered}, 409),
        ("post", "/v1/commands", "/v1/commands", "service", {"content": TOO_LARGE}, 413),
        (
            "post",
            "/v1/commands",
            "/v1/commands",
            "service",
            {"content": json.dumps(dialogue), "headers": NOT_JSON},
            415,
        ),
        ("post", "/v1/commands", "/v1/commands", "service", {"json": marketing}, 422),
        (
            "post",
            "/v1/commands",
            "/v1/commands",
            "service",
            {"json": {"commands": [dialogue, marketing]}},
            422,
        ),
        ("get", "/v1/subjects/{subject_id}", f"/v1/subjects/{UNKNOWN}", "officer", {}, 404),
        ("get", "/v1/subjects/{subject_id}", s, "officer", {"params": {"reveal": "true"}}, 400),
        ("get", "/v1/subjects/{subject_id}", s, "officer", {"params": {"reveal": "maybe"}}, 400),
        ("get", "/v1/subjects/{subject_id}", s, "auditor", {"params": {"reveal": "true"}}, 403),
        ("get", "/v1/subjects", "/v1/subjects", "service", {}, 400),
        ("get", "/v1/subjects/{subject_id}/history", f"{s}x/history", "officer", {}, 404),
        ("get", "/v1/subjects/{subject_id}/export", f"{s}x/export", "officer", {}, 404),
        (
            "get",
            "/v1/subjects/{subject_id}/export",
            f"{s}/export",
            "officer",
            {"params": {"format": "pdf"}},
            400,
        ),
        ("get", "/v1/requests", "/v1/requests", "officer", {"params": {"now": "soon"}}, 400),
        ("get", "/v1/reports/{name}", "/v1/reports/nonsense", "auditor", {}, 400),
        (
            "get",
            "/v1/reports/{name}",
            "/v1/reports/ropa",
            "auditor",
            {"params": {"format": "pdf"}},
            400,
        ),
        ("get", "/v1/audit/proof", "/v1/audit/proof", "auditor", {}, 400),
        (
            "get",
            "/v1/audit/proof",
            "/v1/audit/proof",
            "auditor",
            {"params": {"leaf": -1}},
            400,
        ),
        (
            "get",
            "/v1/audit/proof",
            "/v1/audit/proof",
            "auditor",
            {"params": {"subject": UNKNOWN}},
            404,
        ),
        ("post", "/v1/tokens", "/v1/tokens", "admin", {"json": {"role": "root"}}, 400),
        (
            "post",
            "/v1/tokens",
            "/v1/tokens",
            "admin",
            {"content": json.dumps(token), "headers": NOT_JSON},
            415,
        ),
        ("post", "/v1/tokens", "/v1/tokens", "admin", {"data": token}, 400),  # a form: no JSON
        ("post", "/v1/tokens", "/v1/tokens", "admin", {"content": TOO_LARGE}, 413),
        ("delete", "/v1/tokens/{token}", "/v1/tokens/no-such-token", "admin", {}, 404),
        ("get", "/healthz", "/healthz", None, {}, 200),
    ]
    # every route that needs a token: none (401), and a role that may not (403)
    not_allowed = {
        ("post", "/v1/commands", "/v1/commands"): ("auditor", {"json": dialogue}),
        ("get", "/v1/subjects/{subject_id}", s): ("service", {}),
        ("get", "/v1/subjects", "/v1/subjects?email=a@b.dk"): ("auditor", {}),
        ("get", "/v1/subjects/{subject_id}/history", f"{s}/history"): ("service", {}),
        ("get", "/v1/subjects/{subject_id}/export", f"{s}/export"): ("auditor", {}),
        ("get", "/v1/requests", "/v1/requests"): ("service", {}),
        ("get", "/v1/reports/{name}", "/v1/reports/ropa"): ("service", {}),
        ("get", "/v1/audit/checkpoint", "/v1/audit/checkpoint"): ("service", {}),
        ("get", "/v1/audit/proof", f"/v1/audit/proof?subject={subject}"): ("service", {}),
        ("get", "/v1/tokens", "/v1/tokens"): ("officer", {}),
        ("post", "/v1/tokens", "/v1/tokens"): ("officer", {"json": token}),
        ("delete", "/v1/tokens/{token}", "/v1/tokens/x"): ("officer", {}),
    }
    for (method, route, path), (role, kwargs) in not_allowed.items():
        cases += [
            (method, route, path, None, kwargs, 401),
            (method, route, path, role, kwargs, 403),
        ]
    return cases


def test_every_route_documents_what_the_server_answers(
    served: Served, subject: str, document: dict[str, Any]
) -> None:
    """Representative failures of every route: the status is documented for the route, and
    the body fits the schema documented for that status (the one error shape)."""
    assert "HTTPValidationError" not in json.dumps(document)
    assert "ValidationError" not in document["components"]["schemas"]
    cases = _cases(subject)
    operations = {(m, p) for p, ops in document["paths"].items() for m in ops}
    assert {(m, r) for m, r, *_ in cases} == operations  # a case for every route
    problems = []
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for method, route, path, role, kwargs, status in cases:
            headers = {**kwargs.get("headers", {}), **(served.headers(role) if role else {})}
            arguments = {k: v for k, v in kwargs.items() if k != "headers"}
            answer = client.request(method.upper(), path, headers=headers, **arguments)
            where = f"{method.upper()} {path} as {role}"
            if answer.status_code != status:
                problems.append(f"{where}: {answer.status_code} != {status}: {answer.text}")
                continue
            documented = document["paths"][route][method]["responses"]
            if str(status) not in documented:
                problems.append(f"{where}: {status} is not documented")
                continue
            schema = documented[str(status)]["content"]["application/json"]["schema"]
            if status >= 400:
                assert schema == {"$ref": "#/components/schemas/Error"}, where
                assert answer.json()["ok"] is False
            if not valid(schema, answer.json(), document):
                problems.append(f"{where}: the body does not fit its documented schema")
    assert problems == []
    for route, operations_of in document["paths"].items():
        for method, operation in operations_of.items():
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    content = response["content"]["application/json"]["schema"]
                    assert content == {"$ref": "#/components/schemas/Error"}, (route, method)
            if route != "/healthz":
                assert {"401", "403"} <= set(operation["responses"]), (route, method)


def test_token_creation_documents_its_body(document: dict[str, Any]) -> None:
    body = document["paths"]["/v1/tokens"]["post"]["requestBody"]
    schema = body["content"]["application/json"]["schema"]
    assert body["required"] is True
    assert valid(schema, {"role": "service", "name": "webshop"}, document)
    assert valid(schema, body["content"]["application/json"]["example"], document)
    for refused in (
        {"role": "service"},
        {"role": "root", "name": "x"},
        {"role": "service", "name": "a b"},
        {"role": "service", "name": "x", "extra": 1},
    ):
        assert not valid(schema, refused, document), refused


# -- the command schemas against the parser ----------------------------------------------------


def _parses(command: dict[str, Any]) -> bool:
    """Whether the server takes `command`: it sets the actor to its token's name first."""
    try:
        parse_command({**command, "actor": "openapi-token"})
    except LedgerError:
        return False
    return True


def _variants(kind: str) -> list[dict[str, Any]]:
    """The example of `kind`, and the example with each field null or an empty list."""
    example = EXAMPLES[kind]
    out = [example]
    for name in (*COMMANDS[kind], *COMMON):
        out.append({**example, name: None})
        out.append({**example, name: []})
    if "value" in COMMANDS[kind]:
        for value in ("", "  ", {}, "x", 7, 0, False, [1], {"a": None}):
            out.append({**example, "value": value})
    return out


@pytest.mark.parametrize("kind", sorted(COMMANDS))
def test_command_schemas_take_what_the_parser_takes(kind: str, document: dict[str, Any]) -> None:
    """Null in an optional field is skipped by the parser, so the schema allows it; a
    required field, and `value` above all, is never null."""
    schema = {"$ref": f"#/components/schemas/command_{kind}"}
    body = document["paths"]["/v1/commands"]["post"]["requestBody"]
    whole = body["content"]["application/json"]["schema"]
    for variant in _variants(kind):
        parses = _parses(variant)
        assert valid(schema, variant, document) == parses, variant
        assert valid(whole, variant, document) == parses, variant
    assert valid(whole, {"commands": [EXAMPLES[kind]]}, document)


def test_command_schemas_follow_nested_and_text_rules(document: dict[str, Any]) -> None:
    def same(command: dict[str, Any]) -> None:
        schema = {"$ref": f"#/components/schemas/command_{command['type']}"}
        assert valid(schema, command, document) == _parses(command), command

    register = EXAMPLES["register_subject"]
    same({**register, "identifiers": {"email": None, "phone": "+45 45 57 10 57"}})
    same({**register, "identifiers": {}})
    agree = EXAMPLES["agree_disclosure"]
    same({**agree, "recipient": {**agree["recipient"], "name": None}})
    same({**agree, "recipient": {**agree["recipient"], "name": "   "}})
    same({**agree, "categories": [None]})
    collect = EXAMPLES["collect"]
    same({**collect, "category": "x" * 10_000})
    same({**collect, "category": "x" * 10_001})
    same({**collect, "category": " \t"})
    assert not _parses({**collect, "value": None})
    value = document["components"]["schemas"]["command_collect"]["properties"]["value"]
    assert not valid(value, None, document)
