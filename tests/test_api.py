"""The HTTP service against a real uvicorn server, on SQLite and PostgreSQL.

Every endpoint, the whole role × endpoint matrix, every error status, oversized and
malformed bodies, the actor rule, batches, idempotency, group commit and the access log.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from ledger.api import routes
from ledger.api.openapi import EXAMPLES
from ledger.commands import COMMANDS, OFFICER_COMMANDS, parse_command
from tests.test_api_support import Served, api_backend, register, served

__all__ = ["api_backend", "served"]  # fixtures used by this module

EMAIL = "karen.blixen@example.dk"


@pytest.fixture(scope="module")
def subject(served: Served) -> str:
    """A customer with an e-mail, a name and marketing consent; registered by an officer."""
    with served.client("officer") as client:
        subject = register(client, identifiers={"email": EMAIL})
        for command in (
            {
                "type": "collect",
                "subject": subject,
                "category": "name",
                "value": "Karen Blixen",
                "purpose": "customer_administration",
                "legal_basis": "contract",
                "source": "subject",
            },
            {
                "type": "give_consent",
                "subject": subject,
                "purpose": "marketing",
                "notice_version": "2018-05-25",
                "method": "web_form",
                "channels": ["email"],
            },
        ):
            answer = client.post("/v1/commands", json=command)
            assert answer.status_code == 200, answer.text
    wait_sealed(served)
    return subject


def wait_sealed(served: Served, beyond: int = 0) -> int:
    """Wait until the background work has sealed every event so far (it does so each second);
    with `beyond`, first write an event so that a newer checkpoint than that size comes."""
    if beyond:
        with served.client("service") as service:
            answer = service.post("/v1/commands", json=_register_command())
            assert answer.status_code == 200, answer.text
    with served.client("auditor") as client:
        position = client.get("/healthz").json()["position"]
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            size = client.get("/v1/audit/checkpoint").json()["tree_size"]
            if size >= position:
                return int(size)
            time.sleep(0.1)
    raise AssertionError("the audit log was not sealed in time")


def _register_command() -> dict[str, Any]:
    return {
        "type": "register_subject",
        "kind": "prospect",
        "purpose": "customer_administration",
        "legal_basis": "legitimate_interest",
    }


# -- the role × endpoint matrix ------------------------------------------------------------

ALL = ("service", "officer", "auditor", "admin")


@dataclass(frozen=True)
class Endpoint:
    name: str
    method: str
    path: Callable[[str], str]
    allowed: tuple[str, ...]  # roles; "public" = no token needed
    body: Callable[[str], Any] | None = None
    success: int = 200


ENDPOINTS = [
    Endpoint(
        "command",
        "POST",
        lambda s: "/v1/commands",
        ("service", "officer"),
        lambda s: {"type": "record_dialogue", "subject": s},
    ),
    Endpoint(
        "officer command",
        "POST",
        lambda s: "/v1/commands",
        ("officer",),
        lambda s: {"type": "place_legal_hold", "subject": s, "reason": "matrix"},
    ),
    Endpoint(
        "batch",
        "POST",
        lambda s: "/v1/commands",
        ("service", "officer"),
        lambda s: {"commands": [{"type": "record_dialogue", "subject": s}]},
    ),
    Endpoint("subject", "GET", lambda s: f"/v1/subjects/{s}", ("officer", "auditor")),
    Endpoint(
        "reveal", "GET", lambda s: f"/v1/subjects/{s}?reveal=true&purpose=matrix", ("officer",)
    ),
    Endpoint("find", "GET", lambda s: f"/v1/subjects?email={EMAIL}", ("service", "officer")),
    Endpoint("history", "GET", lambda s: f"/v1/subjects/{s}/history", ("officer", "auditor")),
    Endpoint("export", "GET", lambda s: f"/v1/subjects/{s}/export", ("officer",)),
    Endpoint("requests", "GET", lambda s: "/v1/requests", ("officer", "auditor")),
    Endpoint("report", "GET", lambda s: "/v1/reports/ropa", ("officer", "auditor")),
    Endpoint("checkpoint", "GET", lambda s: "/v1/audit/checkpoint", ("officer", "auditor")),
    Endpoint(
        "proof",
        "GET",
        lambda s: f"/v1/audit/proof?subject={s}",
        ("officer", "auditor"),
    ),
    Endpoint("tokens", "GET", lambda s: "/v1/tokens", ("admin",)),
    Endpoint(
        "create token",
        "POST",
        lambda s: "/v1/tokens",
        ("admin",),
        lambda s: {"role": "service", "name": "matrix-made"},
    ),
    Endpoint(
        "revoke token", "DELETE", lambda s: "/v1/tokens/no-such-token", ("admin",), success=404
    ),
    Endpoint("health", "GET", lambda s: "/healthz", ("public",)),
    Endpoint("openapi", "GET", lambda s: "/openapi.json", ("public",)),
]

CALLERS = (None, "bogus", *ALL)


def expected_status(endpoint: Endpoint, caller: str | None) -> int:
    if "public" in endpoint.allowed:
        return 200
    if caller is None or caller == "bogus":
        return 401
    if caller not in endpoint.allowed:
        return 403
    return endpoint.success


def test_role_matrix(served: Served, subject: str) -> None:
    """Every caller (none, a bad token, each role) against every endpoint."""
    failures = []
    with httpx.Client(base_url=served.url, timeout=30) as client:
        for endpoint in ENDPOINTS:
            for caller in CALLERS:
                headers = {}
                if caller == "bogus":
                    headers["Authorization"] = "Bearer ldg_not-a-real-token"
                elif caller is not None:
                    headers = served.headers(caller)
                body = endpoint.body(subject) if endpoint.body else None
                answer = client.request(
                    endpoint.method, endpoint.path(subject), headers=headers, json=body
                )
                want = expected_status(endpoint, caller)
                if answer.status_code != want:
                    failures.append(f"{endpoint.name} as {caller}: {answer.status_code} != {want}")
                    continue
                payload = answer.json()
                if want == 401:
                    assert payload["error"]["code"] == "unauthorized"
                elif want == 403:
                    assert payload == {"ok": False, "error": payload["error"]}
                    assert payload["error"]["code"] == "forbidden"
    assert failures == []


def test_matrix_covers_every_route(served: Served) -> None:
    paths = {route.path for route in routes.router.routes}  # type: ignore[attr-defined]
    covered = {"/v1/commands", "/v1/subjects/{subject_id}", "/v1/subjects", "/healthz"}
    covered |= {
        "/v1/subjects/{subject_id}/history",
        "/v1/subjects/{subject_id}/export",
        "/v1/requests",
        "/v1/reports/{name}",
        "/v1/audit/checkpoint",
        "/v1/audit/proof",
        "/v1/tokens",
        "/v1/tokens/{token}",
    }
    assert paths == covered
    assert len({e.name for e in ENDPOINTS}) == len(ENDPOINTS)


# -- endpoints ------------------------------------------------------------------------------


def test_health_and_openapi(served: Served) -> None:
    with served.client() as client:
        health = client.get("/healthz").json()
        assert health["ok"] is True and health["status"] == "ok"
        document = client.get("/openapi.json").json()
        assert client.get("/docs").status_code == 200
    for path in ("/v1/commands", "/v1/subjects/{subject_id}", "/v1/audit/proof", "/healthz"):
        assert path in document["paths"]
    examples = document["paths"]["/v1/commands"]["post"]["requestBody"]["content"][
        "application/json"
    ]["examples"]
    assert set(COMMANDS) <= set(examples)
    for kind in COMMANDS:
        assert f"command_{kind}" in document["components"]["schemas"]
        assert parse_command(examples[kind]["value"]).type == kind
        assert ("officer" in examples[kind]["summary"]) == (kind in OFFICER_COMMANDS)
    assert set(EXAMPLES) == set(COMMANDS)
    assert "bearer" in str(document["components"]["securitySchemes"]).lower()


def test_subject_find_history_and_reveal(served: Served, subject: str) -> None:
    with served.client("officer") as officer, served.client("auditor") as auditor:
        sealed = auditor.get(f"/v1/subjects/{subject}").json()
        assert sealed["ok"] is True and sealed["subject"] == subject
        assert {d["category"]: d["value"] for d in sealed["data"]}["name"] is None
        revealed = officer.get(
            f"/v1/subjects/{subject}", params={"reveal": "true", "purpose": "phone call"}
        ).json()
        values = {d["category"]: d["value"] for d in revealed["data"]}
        assert values["name"] == "Karen Blixen" and values["email"] == EMAIL
        found = officer.get("/v1/subjects", params={"email": " Karen.Blixen@Example.dk "}).json()
        assert found == {"ok": True, "subjects": [subject]}
        assert officer.get("/v1/subjects", params={"email": "x@y.dk"}).json()["subjects"] == []
        history = auditor.get(f"/v1/subjects/{subject}/history").json()
        assert history["subject"] == subject
        types = [e["type"] for e in history["events"]]
        assert "DataViewed" in types
        viewed = next(e for e in history["events"] if e["type"] == "DataViewed")
        assert viewed["actor"] == "officer-token"
        assert "Karen" not in str(history)


def test_requests_and_export(served: Served, subject: str) -> None:
    request = {
        "type": "open_request",
        "subject": subject,
        "right": "access",
        "received_at": "2025-03-17T10:00:00+01:00",
        "occurred_at": "2025-03-17T10:05:00+01:00",
    }
    with served.client("officer") as officer, served.client("auditor") as auditor:
        opened = officer.post("/v1/commands", json=request).json()
        assert opened["ok"] is True and opened["due"] == "2025-04-22"
        listed = [r["request"] for r in auditor.get("/v1/requests").json()["requests"]]
        assert opened["request"] in listed

        def overdue(now: str) -> list[str]:
            answer = auditor.get("/v1/requests", params={"overdue": "true", "now": now})
            return [r["request"] for r in answer.json()["requests"]]

        assert opened["request"] not in overdue("2025-04-22T12:00:00+02:00")
        assert opened["request"] in overdue("2025-04-23T12:00:00+02:00")
        path = f"/v1/subjects/{subject}/export"
        document = officer.get(path)
        assert document.status_code == 200 and document.json()["ok"] is True
        assert "Karen Blixen" in document.text
        html = officer.get(path, params={"format": "html"})
        assert html.headers["content-type"].startswith("text/html")
        assert "Karen Blixen" in html.text
        portable = officer.get(path, params={"portable": "true"})
        assert portable.status_code == 200 and "Karen Blixen" in portable.text
        assert _error(officer.get(path, params={"format": "pdf"})) == (400, "invalid_command")
        history = auditor.get(f"/v1/subjects/{subject}/history").json()["events"]
        views = [e for e in history if e["type"] == "DataViewed"]
        assert views[-1]["actor"] == "officer-token"


def test_audit_answers_cover_what_was_just_written(served: Served) -> None:
    """No waiting for the background work: a checkpoint or a proof asked for right after a
    write covers it (they once answered `no checkpoint yet` for up to a second)."""
    with served.client("service") as service:
        written = service.post("/v1/commands", json=_register_command())
        assert written.status_code == 200, written.text
    with served.client("auditor") as auditor:
        position = auditor.get("/healthz").json()["position"]
        assert auditor.get("/v1/audit/checkpoint").json()["tree_size"] >= position
        proved = auditor.get("/v1/audit/proof", params={"subject": written.json()["subject"]})
        assert proved.status_code == 200, proved.text
        assert proved.json()["contiguous"] is True
        assert all(event["included"] for event in proved.json()["events"])


def test_audit_and_reports(served: Served, subject: str) -> None:
    import base64

    from ledger.audit.merkle import verify_inclusion

    wait_sealed(served)
    with served.client("auditor") as auditor:
        checkpoint = auditor.get("/v1/audit/checkpoint").json()
        assert checkpoint["ok"] is True and checkpoint["tree_size"] > 0
        assert checkpoint["checkpoint"].splitlines()[1] == str(checkpoint["tree_size"])
        proved = auditor.get("/v1/audit/proof", params={"subject": subject}).json()
        assert proved["subject"] == subject and proved["contiguous"] is True
        for event in proved["events"]:
            if not event["included"]:
                continue
            verify_inclusion(
                event["leaf_index"],
                proved["checkpoint"]["tree_size"],
                base64.b64decode(event["leaf_hash"]),
                [base64.b64decode(p) for p in event["proof"]],
                base64.b64decode(proved["checkpoint"]["root"]),
            )
        assert auditor.get("/v1/audit/proof", params={"leaf": 0}).status_code == 200
        first = checkpoint["tree_size"]
        wait_sealed(served, beyond=first)
        answer = auditor.get("/v1/audit/proof", params={"first": first})
        assert answer.status_code == 200, answer.text
        assert _error(auditor.get("/v1/audit/proof", params={"first": first, "size": 10**9})) == (
            400,
            "invalid_command",
        )
        texts = [auditor.get("/v1/reports/ropa").text]
        assert auditor.get("/v1/reports/ropa").json()["ok"] is True
        for name in ("consent", "retention", "requests", "disclosures"):
            answer = auditor.get(f"/v1/reports/{name}", params={"now": "2026-01-01T00:00:00Z"})
            assert answer.status_code == 200, answer.text
            texts.append(answer.text)
        markdown = auditor.get("/v1/reports/ropa", params={"format": "md"})
        assert markdown.headers["content-type"].startswith("text/markdown")
        html = auditor.get("/v1/reports/consent", params={"format": "html"})
        assert html.headers["content-type"].startswith("text/html")
        texts += [markdown.text, html.text, str(proved)]
    for text in texts:
        assert "Karen Blixen" not in text and EMAIL not in text


def test_actor_is_the_token_name(served: Served, subject: str) -> None:
    with served.client("service") as client:
        answer = client.post(
            "/v1/commands",
            json={"type": "record_dialogue", "subject": subject, "actor": "mallory"},
        )
        assert answer.status_code == 200, answer.text
    with served.client("auditor") as auditor:
        events = auditor.get(f"/v1/subjects/{subject}/history").json()["events"]
    assert "mallory" not in {e["actor"] for e in events}
    assert events[-1]["actor"] == "service-token"


def test_batch_is_one_transaction(served: Served) -> None:
    new = str(uuid.uuid4())
    register_cmd = {
        "type": "register_subject",
        "subject": new,
        "kind": "customer",
        "purpose": "customer_administration",
        "legal_basis": "contract",
    }
    breaking = {
        "type": "process",
        "subject": new,
        "purpose": "marketing",
        "activity": "newsletter",
        "channel": "email",
    }
    with served.client("service") as client, served.client("officer") as officer:
        answer = client.post("/v1/commands", json={"commands": [register_cmd, breaking]})
        assert answer.status_code == 422
        payload = answer.json()
        assert payload["ok"] is False and payload["error"]["code"] == "consent_required"
        assert payload["results"][0]["rolled_back"] is True
        assert officer.get(f"/v1/subjects/{new}").status_code == 404
        collect = {
            "type": "collect",
            "subject": new,
            "category": "name",
            "value": "Isak Dinesen",
            "purpose": "customer_administration",
            "legal_basis": "contract",
            "source": "subject",
        }
        answer = client.post("/v1/commands", json={"commands": [register_cmd, collect]})
        assert answer.status_code == 200, answer.text
        assert answer.json() == {
            "ok": True,
            "results": [{"ok": True, "subject": new}, {"ok": True}],
        }
        assert officer.get(f"/v1/subjects/{new}").status_code == 200


def test_idempotency_over_http(served: Served) -> None:
    command = {
        "type": "register_subject",
        "kind": "prospect",
        "purpose": "customer_administration",
        "legal_basis": "legitimate_interest",
        "idempotency_key": f"k-{uuid.uuid4()}",
    }
    with served.client("service") as client:
        first = client.post("/v1/commands", json=command).json()
        again = client.post("/v1/commands", json=command).json()
        assert first == again and first["ok"] is True
        changed = client.post("/v1/commands", json={**command, "kind": "customer"})
        assert changed.status_code == 409 and changed.json()["error"]["code"] == "duplicate"


# -- every error status ----------------------------------------------------------------------


def _error(answer: httpx.Response) -> tuple[int, str]:
    payload = answer.json()
    assert payload["ok"] is False and set(payload["error"]) == {"code", "message"}, payload
    return answer.status_code, payload["error"]["code"]


def test_error_statuses(served: Served, subject: str) -> None:
    unknown = str(uuid.uuid4())
    with served.client("officer") as c:
        post = c.post
        assert _error(post("/v1/commands", json={"type": "nope"})) == (400, "invalid_command")
        assert _error(post("/v1/commands", json=[1, 2])) == (400, "invalid_command")
        assert _error(post("/v1/commands", content=b'{"type": ')) == (400, "invalid_command")
        assert _error(post("/v1/commands", content=b"\xff\xfe")) == (400, "invalid_command")
        assert _error(post("/v1/commands", json={"commands": []})) == (400, "invalid_command")
        assert _error(post("/v1/commands", json={"commands": [], "x": 1})) == (
            400,
            "invalid_command",
        )
        assert _error(c.get("/v1/subjects")) == (400, "invalid_command")
        assert _error(c.get("/v1/subjects", params={"email": EMAIL, "phone": "1"})) == (
            400,
            "invalid_command",
        )
        assert _error(c.get(f"/v1/subjects/{subject}", params={"reveal": "true"})) == (
            400,
            "invalid_command",
        )
        bad_bool = c.get(f"/v1/subjects/{subject}", params={"reveal": EMAIL})
        assert _error(bad_bool) == (400, "invalid_command")
        assert EMAIL not in bad_bool.text
        record = {"type": "record_dialogue", "subject": unknown}
        assert _error(post("/v1/commands", json=record)) == (404, "unknown_subject")
        assert _error(c.get(f"/v1/subjects/{unknown}")) == (404, "unknown_subject")
        assert _error(c.get("/v1/subjects/not-a-uuid")) == (404, "unknown_subject")
        for path in (f"/v1/subjects/{EMAIL}", f"/v1/subjects/{EMAIL}/history"):
            by_value = c.get(path)  # a personal value where an id belongs is not repeated
            assert _error(by_value) == (404, "unknown_subject") and EMAIL not in by_value.text
        proof = c.get("/v1/audit/proof", params={"subject": EMAIL})
        assert EMAIL not in proof.text and proof.status_code in (400, 404)
        assert _error(c.get(f"/v1/subjects/{unknown}/history")) == (404, "unknown_subject")
        release = {"type": "release_legal_hold", "subject": subject, "hold": unknown}
        assert _error(post("/v1/commands", json=release)) == (404, "unknown_hold")
        verify = {"type": "verify_identity", "subject": subject, "request": unknown}
        assert _error(post("/v1/commands", json=verify)) == (404, "unknown_request")
        revoke = {"type": "revoke_disclosure_agreement", "subject": subject, "agreement": unknown}
        assert _error(post("/v1/commands", json=revoke)) == (404, "unknown_agreement")
        again = {
            "type": "register_subject",
            "subject": subject,
            "kind": "customer",
            "purpose": "customer_administration",
            "legal_basis": "contract",
        }
        assert _error(post("/v1/commands", json=again)) == (409, "duplicate")
        marketing = {
            "type": "process",
            "subject": subject,
            "purpose": "marketing",
            "activity": "sms_offer",
            "channel": "sms",
        }
        assert _error(post("/v1/commands", json=marketing)) == (422, "consent_required")
        outside = {
            "type": "transfer",
            "subject": subject,
            "categories": ["name"],
            "country": "US",
            "recipient": "Acme Inc",
        }
        assert _error(post("/v1/commands", json=outside)) == (422, "transfer_outside_eu")
        assert _error(c.get("/v1/nothing-here")) == (404, "invalid_command")
        assert _error(c.delete("/v1/commands")) == (405, "invalid_command")
        assert _error(c.get("/v1/requests", params={"now": "soon"})) == (400, "invalid_command")
        assert _error(c.get("/v1/reports/nonsense")) == (400, "invalid_command")
        assert _error(c.get("/v1/audit/proof")) == (400, "invalid_command")
        assert _error(c.get("/v1/audit/proof", params={"leaf": -1})) == (400, "invalid_command")
        assert _error(c.get("/v1/audit/proof", params={"subject": unknown})) == (
            404,
            "unknown_subject",
        )
    with served.client() as anonymous:
        assert _error(anonymous.post("/v1/commands", json=record)) == (401, "unauthorized")
        basic = anonymous.get("/v1/tokens", headers={"Authorization": "Basic YTpi"})
        assert _error(basic) == (401, "unauthorized")
        assert basic.headers["www-authenticate"] == "Bearer"
    with served.client("service") as service:
        erase = {"type": "erase", "subject": subject}
        assert _error(service.post("/v1/commands", json=erase)) == (403, "forbidden")
        batch = {"commands": [{"type": "record_dialogue", "subject": subject}, erase]}
        assert _error(service.post("/v1/commands", json=batch)) == (403, "forbidden")


def test_times_out_of_range_are_refused_and_ids_taken_in_any_form(
    served: Served, subject: str
) -> None:
    """A time in year 1 or 9999 was once accepted (200), and from then on every read of
    every subject was a 500: deadlines computed from it overflowed, and events cannot be
    changed. Out-of-range times and dates are `invalid_command` now, nothing is written,
    and the reads keep working. A subject id in upper case (or braces) is the same subject
    for every read; it was 404 for `subject show` after recording a `DataViewed`."""
    far_past = "0001-01-01T00:00:00+14:00"
    far_future = "9999-12-31T23:59:59-14:00"
    with served.client("officer") as c:
        before = len(c.get(f"/v1/subjects/{subject}/history").json()["events"])
        dialogue = {"type": "record_dialogue", "subject": subject}
        for when in (far_past, far_future, "1899-12-31T23:59:59Z", "3000-01-01T00:00:00Z"):
            answer = c.post("/v1/commands", json={**dialogue, "occurred_at": when})
            assert _error(answer) == (400, "invalid_command"), when
            assert "1900 and 2999" in answer.json()["error"]["message"]
        competition = {
            "type": "enter_competition",
            "subject": subject,
            "competition": "summer",
            "competition_ends_on": "9999-12-31",
        }
        assert _error(c.post("/v1/commands", json=competition)) == (400, "invalid_command")
        request = {"type": "open_request", "subject": subject, "right": "access"}
        late = c.post("/v1/commands", json={**request, "received_at": far_past})
        assert _error(late) == (400, "invalid_command")
        for report in ("retention", "requests", "disclosures", "compliance"):
            far = c.get(f"/v1/reports/{report}", params={"now": far_future})
            assert _error(far) == (400, "invalid_command"), report
        assert _error(c.get("/v1/requests", params={"now": far_past})) == (400, "invalid_command")
        huge = c.get("/v1/audit/proof", params={"leaf": 10**23})
        assert _error(huge) == (400, "invalid_command")
        assert len(c.get(f"/v1/subjects/{subject}/history").json()["events"]) == before
        assert c.get("/v1/reports/retention").status_code == 200

        for other_form in (subject.upper(), "{" + subject + "}", subject.replace("-", "")):
            shown = c.get(f"/v1/subjects/{other_form}")
            assert shown.status_code == 200 and shown.json()["subject"] == subject
            revealed = c.get(
                f"/v1/subjects/{other_form}", params={"reveal": "true", "purpose": "support"}
            )
            assert revealed.status_code == 200, revealed.text
            assert {d["category"]: d["value"] for d in revealed.json()["data"]}["email"] == EMAIL
        events = c.get(f"/v1/subjects/{subject.upper()}/history").json()["events"]
        assert len(events) == before + 3 and events[-1]["type"] == "DataViewed"


def test_oversized_bodies(served: Served, subject: str) -> None:
    big = {
        "type": "collect",
        "subject": subject,
        "category": "correspondence",
        "value": "x" * (1024 * 1024 + 10),
        "purpose": "customer_administration",
        "legal_basis": "contract",
        "source": "subject",
    }
    with served.client("service") as client:
        answer = client.post("/v1/commands", json=big)
        assert _error(answer) == (413, "invalid_command")

        def chunks() -> Any:
            for _ in range(40):
                yield b"x" * 65536

        chunked = client.post("/v1/commands", content=chunks())
        assert _error(chunked) == (413, "invalid_command")
        # A body just under the limit is read (and here rejected by the schema instead).
        near = client.post("/v1/commands", content=b'{"type": "' + b"y" * 1_000_000 + b'"}')
        assert _error(near) == (400, "invalid_command")
        health = client.get("/healthz")
        assert health.status_code == 200


def test_revoked_token_is_refused(served: Served) -> None:
    env = {**served.env}
    created = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "create", "--role", "service", "--name", "temp"],
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    token = created.stdout.strip()
    assert token.startswith("ldg_") and "\n" not in token
    headers = {"Authorization": f"Bearer {token}"}
    assert httpx.get(f"{served.url}/v1/subjects?email=a@b.dk", headers=headers).status_code == 200
    listed = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "list", "--json"],
        env={**_base_env(), **env},
        capture_output=True,
        text=True,
        check=True,
    )
    assert "temp" in listed.stdout and token not in listed.stdout
    subprocess.run(
        [sys.executable, "-m", "ledger", "token", "revoke", "temp"],
        env={**_base_env(), **env},
        capture_output=True,
        check=True,
    )
    deadline = time.monotonic() + 5
    status = 200
    while time.monotonic() < deadline and status != 401:
        status = httpx.get(f"{served.url}/v1/subjects?email=a@b.dk", headers=headers).status_code
        time.sleep(0.1)
    assert status == 401


def test_tokens_over_http(served: Served) -> None:
    with served.client("admin") as admin:
        made = admin.post("/v1/tokens", json={"role": "auditor", "name": "dt-auditor"}).json()
        assert made["ok"] is True and made["token"].startswith("ldg_")
        listed = admin.get("/v1/tokens").json()["tokens"]
        assert any(t["name"] == "dt-auditor" for t in listed)
        assert made["token"] not in str(listed)
        bad = admin.post("/v1/tokens", json={"role": "root", "name": "x"})
        assert _error(bad) == (400, "invalid_command")
        assert _error(admin.post("/v1/tokens", json={"role": "service"})) == (
            400,
            "invalid_command",
        )
        revoked = admin.delete(f"/v1/tokens/{made['id']}").json()
        assert revoked["revoked"][0]["id"] == made["id"]


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("LEDGER_")}


# -- group commit ----------------------------------------------------------------------------


def test_concurrent_commands_get_their_own_results(served: Served, subject: str) -> None:
    """64 concurrent single commands, every third one breaking a rule: each caller gets its
    own result, the good ones are all written, and they were saved in fewer transactions."""

    async def run() -> list[httpx.Response]:
        async with httpx.AsyncClient(
            base_url=served.url, headers=served.headers("service"), timeout=30
        ) as client:

            def command(i: int) -> dict[str, Any]:
                if i % 3 == 0:
                    return {
                        "type": "process",
                        "subject": subject,
                        "purpose": "marketing",
                        "activity": f"sms-{i}",
                        "channel": "sms",
                    }
                return {
                    "type": "process",
                    "subject": subject,
                    "purpose": "marketing",
                    "activity": f"mail-{i}",
                    "channel": "email",
                }

            return await asyncio.gather(
                *(client.post("/v1/commands", json=command(i)) for i in range(64))
            )

    with served.client("auditor") as client:  # the counters are for a known caller only
        before = client.get("/healthz").json()
    with served.client("auditor") as auditor:
        events_before = len(auditor.get(f"/v1/subjects/{subject}/history").json()["events"])
    answers = asyncio.run(run())
    for i, answer in enumerate(answers):
        if i % 3 == 0:
            assert _error(answer) == (422, "consent_required")
        else:
            assert answer.status_code == 200 and answer.json() == {"ok": True}
    with served.client("auditor") as auditor:
        events = auditor.get(f"/v1/subjects/{subject}/history").json()["events"]
    activities = sorted(e["details"].get("activity", "") for e in events[events_before:])
    assert activities == sorted(f"mail-{i}" for i in range(64) if i % 3)
    with served.client("auditor") as client:
        after = client.get("/healthz").json()
    assert after["commands"] - before["commands"] == 64
    assert after["groups"] - before["groups"] < 64


# -- logs -------------------------------------------------------------------------------------


def test_access_log_has_templates_and_no_personal_values(served: Served, subject: str) -> None:
    already = len(served.log_text())
    with served.client("officer") as client:
        client.get("/v1/subjects", params={"email": EMAIL})
        client.get(f"/v1/subjects/{subject}", params={"reveal": "true", "purpose": "log test"})
    with served.client("service") as service:  # appends take a road of their own
        assert service.post("/v1/commands", json=_register_command()).status_code == 200
        refused = service.post("/v1/commands", json={"type": "erase", "subject": subject})
        assert refused.status_code == 403
    with served.client() as anonymous:
        assert anonymous.post("/v1/commands", json=_register_command()).status_code == 401
    # An access line is written as its response finishes: wait for this test's last one.
    deadline = time.monotonic() + 10
    while True:
        text = served.log_text()[already:]
        lines = [json.loads(line) for line in text.splitlines() if '"http_request"' in line]
        if any(line["status"] == 401 for line in lines) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert lines
    for line in lines:
        assert set(line) >= {"method", "path", "status", "duration_ms", "actor"}
        assert "?" not in line["path"]
    paths = {line["path"] for line in lines}
    assert "/v1/subjects" in paths and "/v1/subjects/{subject_id}" in paths
    finds = [line for line in lines if line["path"] == "/v1/subjects" and line["status"] == 200]
    assert finds and finds[-1]["actor"] == "officer-token"
    appends = [(line["status"], line["actor"]) for line in lines if line["path"] == "/v1/commands"]
    assert {(200, "service-token"), (403, "service-token"), (401, None)} <= set(appends)
    for secret in (EMAIL, "karen.blixen", "Karen Blixen", "log test"):
        assert secret not in text


# -- the command line -------------------------------------------------------------------------


def test_cli_refuses_what_it_cannot_do(tmp_path: Any) -> None:
    env = {**_base_env(), "LEDGER_HOME": str(tmp_path / "home")}
    several = subprocess.run(
        [sys.executable, "-m", "ledger", "serve", "--workers", "2"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert several.returncode == 2 and "PostgreSQL" in several.stderr
    bad_role = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "create", "--role", "root", "--name", "x"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_role.returncode == 1 and bad_role.stdout == ""
    bad_name = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "create", "--role", "service", "--name", "a b"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad_name.returncode == 1 and bad_name.stdout == ""


# -- review findings --------------------------------------------------------------------------


def test_bodies_are_json_whatever_type_a_client_sends_them_as(served: Served, subject: str) -> None:
    """JSON is read from application/json, a +json type, no Content-Type, and the types
    tools send JSON with by default (`curl -d`: a form type; text). A type that cannot
    hold a JSON document (multipart, an image) is 415, nothing written."""
    dialogue = json.dumps({"type": "record_dialogue", "subject": subject})
    with served.client("service") as service, served.client("auditor") as auditor:
        before = len(auditor.get(f"/v1/subjects/{subject}/history").json()["events"])
        for content_type in ("multipart/form-data; boundary=x", "image/png", "text/json", ""):
            answer = service.post(
                "/v1/commands", content=dialogue, headers={"Content-Type": content_type}
            )
            assert _error(answer) == (415, "invalid_command"), content_type
            assert "application/json" in answer.json()["error"]["message"]
        assert len(auditor.get(f"/v1/subjects/{subject}/history").json()["events"]) == before
        taken: tuple[str | None, ...] = (
            "application/json",
            "application/json; charset=utf-8",
            "Application/JSON",
            "application/vnd.cekura.command+json",
            "application/x-www-form-urlencoded",
            "text/plain; charset=utf-8",
            None,
        )
        for content_type in taken:
            headers = {"Content-Type": content_type} if content_type is not None else {}
            answer = service.post("/v1/commands", content=dialogue, headers=headers)
            assert answer.status_code == 200, (content_type, answer.text)
        events = auditor.get(f"/v1/subjects/{subject}/history").json()["events"]
        assert len(events) == before + len(taken)
    with served.client("admin") as admin:
        token = {"role": "service", "name": "made-by-curl"}
        as_curl = admin.post(
            "/v1/tokens",
            content=json.dumps(token),
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert as_curl.status_code == 200, as_curl.text
        multipart = admin.post("/v1/tokens", files={"x": ("x", b"{}")})
        assert _error(multipart) == (415, "invalid_command")


NAMES_WITH_IDENTIFIERS = {
    "karen.blixen@example.dk": "an e-mail address",
    "0101901234": "a CPR number",
    "anna-010190-1234": "a CPR number",
    "004545571057": "a phone number",
}


def test_token_names_holding_identifiers_are_refused(served: Served, tmp_path: Any) -> None:
    """A token's name is the actor kept in the clear in every event it writes (never
    shredded): an e-mail address, CPR or phone number in it is refused like in free text,
    over HTTP and on the command line, without repeating the name."""
    with served.client("admin") as admin:
        for name, kind in NAMES_WITH_IDENTIFIERS.items():
            answer = admin.post("/v1/tokens", json={"role": "service", "name": name})
            assert _error(answer) == (400, "invalid_command"), name
            assert kind in answer.json()["error"]["message"] and name not in answer.text
        for name in ("webshop\n", "anna.dpo\n"):  # a final newline once got through
            answer = admin.post("/v1/tokens", json={"role": "service", "name": name})
            assert _error(answer) == (400, "invalid_command")
        listed = str(admin.get("/v1/tokens").json())
        assert not any(name in listed for name in NAMES_WITH_IDENTIFIERS)
        made = admin.post("/v1/tokens", json={"role": "service", "name": "crm-2025"})
        assert made.status_code == 200, made.text
    home = tmp_path / "home"
    create = [sys.executable, "-m", "ledger", "token", "create", "--role", "officer"]
    refused = subprocess.run(
        [*create, "--name", "karen.blixen@example.dk"],
        env={**_base_env(), "LEDGER_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert refused.returncode == 1 and refused.stdout == ""
    assert "e-mail address" in refused.stderr and "karen" not in refused.stderr
    assert not home.exists()  # refused before anything was made


def test_answers_are_not_kept_by_caches(served: Served, subject: str) -> None:
    """Reveals and exports carry plaintext: every answer (but the API document) says
    `Cache-Control: no-store`, on the appends' own road and for errors too."""
    with served.client("officer") as officer:
        answers = [
            officer.get(f"/v1/subjects/{subject}", params={"reveal": "true", "purpose": "cc"}),
            officer.get(f"/v1/subjects/{subject}/export"),
            officer.get(f"/v1/subjects/{subject}/export", params={"format": "html"}),
            officer.get(f"/v1/subjects/{subject}"),
            officer.get("/v1/subjects", params={"email": EMAIL}),
            officer.get("/v1/reports/ropa", params={"format": "md"}),
            officer.post("/v1/commands", json={"type": "record_dialogue", "subject": subject}),
            officer.post("/v1/commands", json={"type": "nope"}),
            officer.get(f"/v1/subjects/{uuid.uuid4()}"),
            officer.get("/v1/nothing-here"),
        ]
    with served.client() as anonymous:
        answers += [anonymous.get("/healthz"), anonymous.get("/v1/tokens")]
        assert "no-store" not in anonymous.get("/openapi.json").headers.get("cache-control", "")
    for answer in answers:
        assert answer.headers.get("cache-control") == "no-store", answer.request.url
    assert answers[0].status_code == answers[1].status_code == 200


def test_token_create_on_a_fresh_home_keeps_it_private(tmp_path: Any) -> None:
    """`ledger token create` first on a fresh LEDGER_HOME left it 0755 and the database
    0644; it makes the home 0700, as every other command does, and the database 0600."""
    import os
    import stat

    home = tmp_path / "fresh" / "home"
    env = {**_base_env(), "LEDGER_HOME": str(home)}
    created = subprocess.run(
        [sys.executable, "-m", "ledger", "token", "create", "--role", "service", "--name", "a"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        umask=0o022,
    )
    assert created.returncode == 0, created.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    files = sorted(home.glob("ledger.db*"))
    assert files and all(stat.S_IMODE(f.stat().st_mode) == 0o600 for f in files), files
    # the ledger then opens on the database the token store made
    command = json.dumps(_register_command())
    ran = subprocess.run(
        [sys.executable, "-m", "ledger", "exec", "-"],
        env=env,
        input=command,
        capture_output=True,
        text=True,
        timeout=60,
        umask=0o022,
    )
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["ok"] is True
    assert stat.S_IMODE(os.stat(home / "ledger.db").st_mode) == 0o600


def test_proof_of_a_size_without_checkpoint_says_what_is_wrong(
    served: Served, subject: str
) -> None:
    """`leaf=3&size=2` answered "no checkpoint yet (run `ledger audit seal`)" on a sealed
    log: the size was simply not a checkpoint's. The answer says so now."""
    size = wait_sealed(served)
    with served.client("auditor") as auditor:
        leaf = auditor.get("/v1/audit/proof", params={"leaf": 3, "size": 2})
        assert _error(leaf) == (400, "invalid_command")
        assert "leaf 3 is not in a tree of 2 leaves" in leaf.json()["error"]["message"]
        for params in (
            {"leaf": 0, "size": size + 1000},
            {"subject": subject, "size": size + 1000},
            {"first": 1, "size": size + 1000},
        ):
            answer = auditor.get("/v1/audit/proof", params=params)
            assert _error(answer) == (400, "invalid_command"), params
            message = answer.json()["error"]["message"]
            assert f"no signed checkpoint has size {size + 1000}" in message, message
            assert "no checkpoint yet" not in message
        assert auditor.get("/v1/audit/proof", params={"leaf": 0, "size": size}).status_code == 200


def test_markdown_reports_escape_text_from_the_records(served: Served, subject: str) -> None:
    """Free text from the records went into Markdown as it was (HTML escapes it): a pipe,
    a backtick or a tag in a transfer's recipient broke the table or became markup."""
    import re

    recipient = "Nordic | Logistics `AB` <img src=x onerror=alert(1)> *fast* [x](y) _co_"
    transfer = {
        "type": "transfer",
        "subject": subject,
        "categories": ["name"],
        "country": "SE",
        "recipient": recipient,
    }
    with served.client("service") as service:
        answer = service.post("/v1/commands", json=transfer)
        assert answer.status_code == 200, answer.text
    with served.client("auditor") as auditor:
        markdown = auditor.get("/v1/reports/disclosures", params={"format": "md"}).text
    lines = markdown.splitlines()
    at = next(i for i, line in enumerate(lines) if "Nordic" in line)
    rule = next(lines[i] for i in range(at, 0, -1) if lines[i].startswith("| --- |"))
    row = lines[at]
    plain = re.sub(r"\\.", "", row)  # what is left when the escaped characters are taken out
    assert plain.count("|") == rule.count("|"), row  # one cell for the recipient
    for markup in ("`", "<", ">", "*", "[", "]", "_co"):
        assert markup not in plain, (markup, row)
    assert r"Nordic \| Logistics \`AB\` \<img src=x onerror=alert(1)\> \*fast\*" in row
    assert r"\[x\](y) \_co\_" in row


def test_health_without_a_token_says_only_ok(served: Served) -> None:
    """`/healthz` needs no token; it showed the event count to anyone. Now only a caller
    with a live token (any role) sees the counters."""
    with served.client() as anonymous:
        assert anonymous.get("/healthz").json() == {"ok": True, "status": "ok"}
        bogus = anonymous.get("/healthz", headers={"Authorization": "Bearer ldg_nothing"})
        assert bogus.status_code == 200 and bogus.json() == {"ok": True, "status": "ok"}
    for role in ("service", "auditor", "admin"):
        with served.client(role) as client:
            health = client.get("/healthz").json()
        assert health["status"] == "ok" and health["position"] > 0
        assert {"groups", "commands", "group_commit"} <= set(health)
