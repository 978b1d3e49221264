"""`ledger report compliance`: the whole history re-checked, independently of the rules that
guarded each append, with the events behind every finding.

It reads the event log itself (not the read models, not the aggregate), rebuilds what it
needs of each subject with its own small model, and asks:

1. every marketing act had consent for its channel at that moment, and no objection;
2. every disclosure had a valid agreement (made before, not revoked, not expired, covering
   the categories);
3. no transfer or disclosure left the EU;
4. sensitive data came only from the subject, with explicit consent;
5. every shredding was done by its deadline (allowing the sweep interval), and nothing is
   overdue now;
6. every request was answered by its due date;
7. every person whose data another subject gave (a contact person) was told of it within
   a month (Art. 14(3)(a), rule R14);
8. which legal holds kept what, and why;
9. the latest checkpoint is consistent with every earlier one (and all are signed).

"At that moment" means the subject's history as recorded before the act (as the rules
see it, DESIGN 4.5); a consent or agreement dated after the act it covers is noted.
Deadlines use the ledger's calendar arithmetic (`ledger.domain.calendar`) and the
retention classes of the policy catalogue, with anchors re-derived here from the events.
"""

from __future__ import annotations

import base64
import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from uuid import UUID

import orjson

from ledger.audit.merkle import ProofError, consistency_proof, verify_consistency
from ledger.audit.note import NoteError, Verifier, open_checkpoint
from ledger.audit.store import AuditError, derive
from ledger.domain.calendar import add_months, later, local_date, request_due_date
from ledger.domain.policy import PolicyCatalogue
from ledger.domain.retention import scope_deadline
from ledger.domain.subject import consent_widened, withdraws_all
from ledger.errors import LedgerError

__all__ = ["SWEEP_ALLOWANCE", "HistoryChecker", "check_checkpoints"]

SWEEP_ALLOWANCE = timedelta(days=1)
"""How late after its deadline a shredding still counts as on time: the sweep interval
(`ledger sweep` daily; the server sweeps hourly)."""

SUBJECT_TOPIC = "ledger.domain.subject:DataSubject."
PAGE = 5000

CHECKS: dict[str, tuple[str, str]] = {
    "marketing": (
        "Marketing had consent and no objection",
        "Every marketing act had an active consent for its channel at that moment "
        "(e-mail, SMS and telephone marketing, markedsføringsloven §10) and no objection "
        "(Art. 21(3)), and the subject was not restricted (Art. 18).",
    ),
    "disclosures": (
        "Disclosures had a valid agreement",
        "Every disclosure relied on an agreement with the subject made before it, not "
        "revoked, not expired and covering the categories disclosed (policy §5).",
    ),
    "eu": (
        "Nothing left the EU",
        "No transfer or disclosure went to a country outside the EU (policy §6).",
    ),
    "sensitive": (
        "Sensitive data only from the subject, with explicit consent",
        "Every collection of health, family-relation or social data came from the subject "
        "with explicit consent naming the category (Art. 9(2)(a)).",
    ),
    "retention": (
        "Shredding by the deadline",
        "Every scope shredded for retention was shredded by its deadline (allowing the sweep "
        "interval); no scope is past its deadline now unless a legal hold keeps it; nothing "
        "kept under a legal obligation was destroyed early (policy §7).",
    ),
    "requests": (
        "Requests answered in time",
        "Every data subject request was answered by its due date (one month, or three when "
        "extended within the first month; Art. 12(3)), and none is overdue now.",
    ),
    "informed": (
        "People whose data others gave were informed",
        "Every person registered with data another subject gave (a contact person, rule R14) "
        "was sent a notice within one month (Art. 14(3)(a)), and none is waiting longer now.",
    ),
    "holds": (
        "Legal holds",
        "What each legal hold kept from shredding or erasure, and why (Art. 17(3)).",
    ),
    "checkpoints": (
        "The log is append-only",
        "Every checkpoint is signed, and the latest checkpoint is consistent with every "
        "earlier one: nothing recorded was changed or removed since it was signed.",
    ),
}


def _day(text: str | None) -> date | None:
    return local_date(datetime.fromisoformat(text)) if text else None


def _inform_by(provided: _Ref) -> date | None:
    """The last day to tell a person of data another subject gave: one month on."""
    given = _day(provided.occurred_at)
    return add_months(given, 1) if given is not None else None


@dataclass
class _Ref:
    """An event as a finding cites it."""

    notification_id: int
    subject: str
    version: int
    event: str
    occurred_at: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "notification_id": self.notification_id,
            "subject": self.subject,
            "version": self.version,
            "event": self.event,
            "occurred_at": self.occurred_at,
        }


@dataclass
class _Subject:
    """What the checks need of one subject, rebuilt from its events."""

    registered_at: str | None = None
    consents: dict[str, dict[str, Any]] = field(default_factory=dict)
    objections: dict[str, _Ref] = field(default_factory=dict)
    restricted: _Ref | None = None
    agreements: dict[str, dict[str, Any]] = field(default_factory=dict)
    relationships: dict[str, bool] = field(default_factory=dict)
    relationship_ended_at: str | None = None
    last_dialogue_at: str | None = None
    marketing_registered_at: str | None = None
    competitions: dict[str, str] = field(default_factory=dict)
    holds: dict[str, dict[str, Any]] = field(default_factory=dict)
    scopes: dict[str, set[str]] = field(default_factory=dict)  # scope -> live kids
    latest_purpose: dict[str, str] = field(default_factory=dict)  # category -> purpose
    requests: dict[str, dict[str, Any]] = field(default_factory=dict)
    provided: _Ref | None = None  # registered with data another subject gave (R14)
    informed: _Ref | None = None  # the first notice sent to the subject
    erased: bool = False

    def later(self, current: str | None, new: str | None) -> str | None:
        return current if new is None else later(current, new)

    def active_holds(self) -> list[dict[str, Any]]:
        return [h for h in self.holds.values() if h["released_at"] is None]

    def has_active_relationship(self) -> bool:
        return any(self.relationships.values())


class HistoryChecker:
    """Feed events in log order (`add`), then `finish(now)`; findings are collected."""

    def __init__(self, policy: PolicyCatalogue, allowance: timedelta = SWEEP_ALLOWANCE) -> None:
        self.policy = policy
        self.allowance = allowance
        self.subjects: dict[str, _Subject] = {}
        self.findings: list[dict[str, Any]] = []
        self.checked: dict[str, int] = dict.fromkeys(CHECKS, 0)
        self.holds: list[dict[str, Any]] = []
        self.events = 0

    # -- findings ---------------------------------------------------------------------

    def _find(
        self, check: str, message: str, refs: list[_Ref | None], severity: str = "violation"
    ) -> None:
        cited = [r for r in refs if r is not None]
        self.findings.append(
            {
                "check": check,
                "severity": severity,
                "subject": cited[0].subject if cited else None,
                "message": message,
                "events": [r.as_dict() for r in cited],
            }
        )

    # -- the event stream -------------------------------------------------------------

    def add(
        self, notification_id: int, subject: str, version: int, topic: str, state: dict[str, Any]
    ) -> None:
        if not topic.startswith(SUBJECT_TOPIC):
            return
        self.events += 1
        kind = topic[len(SUBJECT_TOPIC) :]
        ref = _Ref(notification_id, subject, version, kind, state.get("occurred_at"))
        s = self.subjects.setdefault(subject, _Subject())
        handler = getattr(self, f"_on_{kind}", None)
        if handler is not None:
            handler(s, ref, state)

    def _on_Registered(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.registered_at = e.get("occurred_at")
        if e.get("provided_by"):
            s.provided = ref

    def _on_SubjectNotified(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        if s.provided is None or s.informed is not None:
            return
        s.informed = ref
        self.checked["informed"] += 1
        due = _inform_by(s.provided)
        told = _day(e.get("occurred_at"))
        if due is not None and told is not None and told > due:
            self._find(
                "informed",
                f"the person was told on {told} of data another subject gave on "
                f"{_day(s.provided.occurred_at)}: later than the month Art. 14(3)(a) allows "
                f"(by {due})",
                [s.provided, ref],
            )

    def _collected(self, s: _Subject, ref: _Ref, e: dict[str, Any], purpose: str | None) -> None:
        scope = e["scope"]
        kid = (e.get("value") or {}).get("kid")
        if kid:
            s.scopes.setdefault(scope, set()).add(kid)
        if scope == "marketing" and ref.event == "DataCollected":  # a rectification is none
            s.marketing_registered_at = s.later(s.marketing_registered_at, e.get("occurred_at"))
        category = e["category"]
        spec = self.policy.categories.get(category)
        if spec is not None and spec.sensitive:
            self.checked["sensitive"] += 1
            if ref.event == "DataCollected" and e.get("source") != "subject":
                self._find(
                    "sensitive",
                    f"sensitive category '{category}' came from '{e.get('source')}', "
                    "not from the subject",
                    [ref],
                )
            consent = s.consents.get(purpose or "")
            explicit = (
                consent is not None
                and consent["active"]
                and consent["explicit"]
                and category in consent["categories"]
            )
            if not explicit:
                self._find(
                    "sensitive",
                    f"sensitive category '{category}' without an active explicit consent "
                    f"for '{purpose}' naming it",
                    [ref, consent["ref"] if consent else None],
                )
        if purpose is not None:
            s.latest_purpose[category] = purpose

    def _on_DataCollected(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        self._collected(s, ref, e, e.get("purpose"))
        if e.get("source") == "subject":  # data the subject gave is contact (policy §7)
            s.last_dialogue_at = s.later(s.last_dialogue_at, e.get("occurred_at"))

    def _on_DataRectified(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        self._collected(s, ref, e, s.latest_purpose.get(e["category"]))

    def _on_ConsentGiven(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        purpose = e["purpose"]
        channels, explicit, categories = consent_widened(
            s.consents.get(purpose),
            e.get("channels") or [],
            bool(e.get("explicit")),
            e.get("categories") or [],
        )
        s.consents[purpose] = {
            "active": True,
            "channels": set(channels),
            "explicit": explicit,
            "categories": set(categories),
            "ref": ref,
        }
        # an objection stands: a later consent does not lift it (R6)

    def _on_ConsentWithdrawn(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        current = s.consents.get(e["purpose"])
        if current is None:
            return
        if withdraws_all(sorted(current["channels"]), e.get("channels") or []):
            current.update(active=False, channels=set())
        else:
            current["channels"] = current["channels"] - set(e["channels"])

    def _on_Objected(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.objections[e["purpose"]] = ref

    def _on_Restricted(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.restricted = ref

    def _on_RestrictionLifted(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.restricted = None

    def _on_DisclosureAgreed(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.agreements[e["agreement"]] = {**e, "ref": ref, "revoked": None}
        if e.get("country") not in self.policy.eu_countries:
            self._find(
                "eu",
                f"agreement {e['agreement']} names a recipient in {e.get('country')}, outside "
                "the EU (it can never be used for a disclosure)",
                [ref],
                severity="note",
            )

    def _on_DisclosureAgreementRevoked(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        found = s.agreements.get(e["agreement"])
        if found is not None:
            found["revoked"] = ref

    def _on_DataDisclosed(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        self.checked["disclosures"] += 1
        self.checked["eu"] += 1
        self._inside_eu(ref, e.get("country"), "disclosure")
        if s.restricted is not None:
            self._find(
                "disclosures", "disclosure while processing was restricted", [ref, s.restricted]
            )
        agreement = s.agreements.get(e["agreement"])
        if agreement is None:
            self._find("disclosures", f"no agreement {e['agreement']} before the disclosure", [ref])
            return
        day = _day(ref.occurred_at)
        problems = []
        if agreement["revoked"] is not None:
            problems.append("the agreement had been revoked")
        if (
            agreement.get("valid_until")
            and day
            and day > date.fromisoformat(agreement["valid_until"])
        ):
            problems.append(f"the agreement expired on {agreement['valid_until']}")
        outside = sorted(set(e.get("categories") or []) - set(agreement.get("categories") or []))
        if outside:
            problems.append(f"the agreement does not cover {', '.join(outside)}")
        agreed = agreement.get("occurred_at")
        if (
            agreed
            and ref.occurred_at
            and datetime.fromisoformat(agreed) > datetime.fromisoformat(ref.occurred_at)
        ):
            problems.append("the agreement is dated after the disclosure")
        if problems:
            self._find(
                "disclosures",
                f"disclosure under agreement {e['agreement']}: {'; '.join(problems)}",
                [ref, agreement["ref"], agreement["revoked"]],
            )

    def _inside_eu(self, ref: _Ref, country: str | None, what: str) -> None:
        if country not in self.policy.eu_countries:
            self._find("eu", f"{what} to {country}, outside the EU", [ref])

    def _on_DataTransferred(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        self.checked["eu"] += 1
        self._inside_eu(ref, e.get("country"), "transfer")
        if s.restricted is not None:
            self._find("eu", "transfer while processing was restricted", [ref, s.restricted])

    def _on_DataProcessed(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        purpose = self.policy.purposes.get(e["purpose"])
        if purpose is None or not purpose.direct_marketing:
            return
        self.checked["marketing"] += 1
        channel = e.get("channel")
        if e["purpose"] in s.objections:
            self._find(
                "marketing",
                f"marketing ({channel or 'no channel'}) after the subject objected",
                [ref, s.objections[e["purpose"]]],
            )
        if s.restricted is not None:
            self._find(
                "marketing", "marketing while processing was restricted", [ref, s.restricted]
            )
        consent = s.consents.get(e["purpose"])
        needs_consent = channel in purpose.consent_channels or purpose.legal_bases == ("consent",)
        if needs_consent:
            ok = (
                consent is not None
                and consent["active"]
                and (
                    channel is None
                    or channel not in purpose.consent_channels
                    or channel in consent["channels"]
                )
            )
            if not ok:
                self._find(
                    "marketing",
                    f"marketing by {channel or 'no channel'} without an active consent for it",
                    [ref, consent["ref"] if consent else None],
                )
            elif consent is not None:
                given = consent["ref"].occurred_at
                if (
                    given
                    and ref.occurred_at
                    and datetime.fromisoformat(given) > datetime.fromisoformat(ref.occurred_at)
                ):
                    self._find(
                        "marketing",
                        "the consent relied on is dated after the marketing act (reported late)",
                        [ref, consent["ref"]],
                        severity="note",
                    )

    def _on_RelationshipStarted(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.relationships[e["relationship"]] = True

    def _on_RelationshipEnded(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.relationships[e["relationship"]] = False
        s.relationship_ended_at = s.later(s.relationship_ended_at, e.get("occurred_at"))

    def _on_DialogueRecorded(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.last_dialogue_at = s.later(s.last_dialogue_at, e.get("occurred_at"))

    def _on_CompetitionEntered(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.competitions[e["competition"]] = e["competition_ends_on"]

    def _on_LegalHoldPlaced(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        hold = {
            "subject": ref.subject,
            "hold": e["hold"],
            "reason": e.get("reason"),
            "placed_at": ref.occurred_at,
            "released_at": None,
            "kept": [],
            "events": [ref.as_dict()],
        }
        s.holds[e["hold"]] = hold
        self.holds.append(hold)

    def _on_LegalHoldReleased(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        hold = s.holds.get(e["hold"])
        if hold is not None:
            hold["released_at"] = ref.occurred_at
            hold["events"].append(ref.as_dict())

    def _on_ErasureCarriedOut(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.erased = True
        for kept in e.get("retained") or []:
            if kept.get("reason") == "legal_hold":
                for hold in s.active_holds():
                    hold["kept"].append(
                        {
                            "scope": kept.get("scope"),
                            "why": "erasure request",
                            "event": ref.as_dict(),
                        }
                    )

    def _on_ScopeShredded(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        scope = e["scope"]
        live = s.scopes.setdefault(scope, set())
        live.difference_update(e.get("kids") or [])
        if s.active_holds():
            self._find(
                "holds",
                f"scope {scope} shredded while a legal hold was in force",
                [ref, *(h_ref for h_ref in self._hold_refs(s))],
            )
        if e.get("reason") == "erasure":
            return
        self.checked["retention"] += 1
        deadline = self.deadline(s, scope)
        day = _day(ref.occurred_at)
        if deadline is None or day is None:
            self._find(
                "retention",
                f"scope {scope} shredded for retention while nothing had started its clock",
                [ref],
                severity="note",
            )
            return
        effective = self._after_holds(s, deadline)
        klass = self.policy.retention.get(scope.split(":", 1)[0])
        if day < deadline and klass is not None and klass.legal_obligation:
            self._find(
                "retention",
                f"scope {scope}, kept under a legal obligation until {deadline}, was shredded "
                f"early on {day}",
                [ref],
            )
        elif day > effective + self.allowance:
            self._find(
                "retention",
                f"scope {scope} was shredded on {day}, after its deadline {effective}",
                [ref],
            )
        recorded = e.get("deadline")
        if recorded and recorded != deadline.isoformat():
            self._find(
                "retention",
                f"scope {scope}: the sweeper recorded the deadline {recorded}, this check "
                f"computes {deadline}",
                [ref],
                severity="note",
            )

    def _hold_refs(self, s: _Subject) -> Iterator[_Ref]:
        for hold in s.active_holds():
            first = hold["events"][0]
            yield _Ref(
                first["notification_id"],
                first["subject"],
                first["version"],
                first["event"],
                first["occurred_at"],
            )

    def _after_holds(self, s: _Subject, deadline: date) -> date:
        """A hold in force at the deadline moves it to the day the hold was released."""
        effective = deadline
        for hold in s.holds.values():
            released = _day(hold["released_at"])
            placed = _day(hold["placed_at"])
            if released and placed and placed <= max(effective, deadline) <= released:
                effective = max(effective, released)
        return effective

    def _on_RequestOpened(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        s.requests[e["request"]] = {**e, "ref": ref, "first_due": e["due"], "done": None}
        received = _day(e.get("received_at"))
        if received and e.get("due") != request_due_date(received).isoformat():
            self._find(
                "requests",
                f"request {e['request']}: due {e.get('due')} recorded, "
                f"{request_due_date(received)} computed from its receipt",
                [ref],
            )

    def _on_RequestExtended(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        request = s.requests.get(e["request"])
        if request is None:
            return
        day = _day(ref.occurred_at)
        if day and day > date.fromisoformat(request["first_due"]):
            self._find(
                "requests",
                f"request {e['request']} was extended on {day}, after its first month "
                f"(due {request['first_due']})",
                [ref, request["ref"]],
            )
        request["due"] = e["due"]
        request["extended"] = ref

    def _on_RequestCompleted(self, s: _Subject, ref: _Ref, e: dict[str, Any]) -> None:
        request = s.requests.get(e["request"])
        if request is None:
            return
        request["done"] = ref
        self.checked["requests"] += 1
        day = _day(ref.occurred_at)
        if day and day > date.fromisoformat(request["due"]):
            self._find(
                "requests",
                f"request {e['request']} ({request.get('right')}) answered on {day}, after its "
                f"due date {request['due']}",
                [ref, request["ref"]],
            )

    # -- deadlines --------------------------------------------------------------------

    def deadline(self, s: _Subject, scope: str) -> date | None:
        """The first day a scope's data may no longer exist (DESIGN 4.2), or None: the
        domain's rule, from the anchors this replay kept itself (a copy of the formula
        could only drift from it; the anchors are what the audit checks)."""
        return scope_deadline(s, self.policy, scope)

    # -- the end ----------------------------------------------------------------------

    def finish(self, now: datetime) -> None:
        """What is still open at `now`: scopes past their deadline, unanswered requests."""
        today = local_date(now)
        for subject, s in self.subjects.items():
            for scope, live in s.scopes.items():
                if not live:
                    continue
                deadline = self.deadline(s, scope)
                if deadline is None:
                    continue
                held = s.active_holds()
                if held and deadline <= today:
                    for hold in held:
                        hold["kept"].append(
                            {"scope": scope, "why": f"retention deadline {deadline} has passed"}
                        )
                    continue
                effective = self._after_holds(s, deadline)
                if today > effective + self.allowance:
                    self.checked["retention"] += 1
                    self._find(
                        "retention",
                        f"scope {scope} is past its deadline {effective} and not shredded",
                        [_Ref(0, subject, 0, "(current state)", None)],
                    )
            for request in s.requests.values():
                if request["done"] is None:
                    self.checked["requests"] += 1
                    if today > date.fromisoformat(request["due"]):
                        self._find(
                            "requests",
                            f"request {request['request']} ({request.get('right')}) is open past "
                            f"its due date {request['due']}",
                            [request["ref"]],
                        )
            if s.provided is not None and s.informed is None and not s.erased:
                self.checked["informed"] += 1
                due = _inform_by(s.provided)
                if due is not None and today > due:
                    self._find(
                        "informed",
                        f"data another subject gave on {_day(s.provided.occurred_at)} and the "
                        f"person has not been told (Art. 14(3)(a): by {due})",
                        [s.provided],
                    )
        self.checked["holds"] = len(self.holds)


# --------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------


class _CursorTree:
    """Stored subtree hashes read through the report's cursor, cached (proofs share nodes)."""

    def __init__(self, query: Any) -> None:
        self.query = query
        self.cache: dict[tuple[int, int], bytes] = {}

    def get(self, level: int, index: int) -> bytes:
        return derive(level, index, self._read)

    def _read(self, level: int, index: int) -> bytes:
        key = (level, index)
        if key not in self.cache:
            rows = self.query(
                "SELECT hash FROM audit_tree WHERE level = ? AND idx = ?", (level, index)
            )
            if not rows:
                raise AuditError(f"the stored tree has no node at level {level} index {index}")
            self.cache[key] = bytes(rows[0]["hash"])
        return self.cache[key]


def check_checkpoints(query: Any, verifier: Verifier | None, events: int) -> dict[str, Any]:
    """Signatures of every checkpoint, and a consistency proof from each to the latest."""
    try:
        rows = query(
            "SELECT tree_size, root, note, created_at FROM audit_checkpoints ORDER BY tree_size"
        )
    except Exception:  # no audit tables yet in this database
        rows = []
    key_source = "the configured signing key"
    other_key: str | None = None
    if rows:
        stored = query("SELECT value FROM audit_meta WHERE name = ?", ("public_key",))
        recorded = str(stored[0]["value"]) if stored else None
        if recorded is not None and verifier is None:
            # No configured key here: the key the log records is all there is, and it
            # proves nothing against whoever can write to the database.
            verifier = Verifier.parse(recorded)
            key_source = (
                "the public key recorded in the database itself (no signing key is "
                "configured here): check with ledger audit verify --public-key KEY for proof"
            )
        elif recorded is not None and verifier is not None and verifier.vkey() != recorded:
            # never the database's word over the configured key: a re-signed log records
            # its forger's key
            other_key = (
                "the database records another public key than the configured signing key's: "
                "its checkpoints were signed by someone else"
            )
    out: dict[str, Any] = {
        "count": len(rows),
        "latest": None,
        "signatures_checked": verifier is not None,
        "signature_key": key_source if verifier is not None else None,
        "public_key": verifier.vkey() if verifier else None,
        "consistent_with_all_earlier": None,
        "events_after_latest": events,
        "problems": [],
    }
    if other_key is not None:
        out["problems"].append(other_key)
    if not rows:
        if events:
            out["problems"].append(f"{events:,} events and no checkpoint signed")
        return out
    latest = rows[-1]
    size, root = int(latest["tree_size"]), bytes(latest["root"])
    out["latest"] = {
        "tree_size": size,
        "root": base64.b64encode(root).decode(),
        "created_at": latest["created_at"],
        "note": latest["note"],
    }
    out["events_after_latest"] = max(0, events - size)
    if verifier is not None:
        for row in rows:
            try:
                cp = open_checkpoint(str(row["note"]), verifier)
                if cp.size != int(row["tree_size"]) or cp.root != bytes(row["root"]):
                    raise NoteError("its row disagrees with its signed note")
            except NoteError as exc:
                out["problems"].append(f"checkpoint of {row['tree_size']} leaves: {exc}")
    tree = _CursorTree(query)
    consistent = True
    for row in rows[:-1]:
        old = int(row["tree_size"])
        try:
            proof = consistency_proof(old, size, tree)
            verify_consistency(old, size, proof, bytes(row["root"]), root)
        except (ProofError, AuditError, ValueError) as exc:
            consistent = False
            out["problems"].append(
                f"the latest checkpoint ({size} leaves) is not consistent with the one of "
                f"{old} leaves: {exc}"
            )
    out["consistent_with_all_earlier"] = consistent
    return out


def _verifier_from_environment() -> Verifier | None:
    """The ledger's public key, from the signing key the environment configures."""
    from ledger.audit.keys import SigningKeyError, load_signer
    from ledger.config import Settings

    try:
        return load_signer(Settings.from_env(), create=False).verifier
    except (SigningKeyError, OSError, ValueError):
        return None


# --------------------------------------------------------------------------------------
# The report
# --------------------------------------------------------------------------------------


def _events(
    query: Any, dialect: str, table: str, position: int
) -> Iterator[tuple[int, str, int, str, bytes]]:
    if dialect == "sqlite":
        sql = (
            "SELECT rowid AS nid, originator_id AS oid, originator_version AS v, topic, state "
            f"FROM {table} WHERE rowid > ? AND rowid <= ? ORDER BY rowid LIMIT ?"
        )
    else:
        sql = (
            "SELECT notification_id AS nid, originator_id::text AS oid, originator_version AS v, "
            f"topic, state FROM {table} WHERE notification_id > ? AND notification_id <= ? "
            "ORDER BY notification_id LIMIT ?"
        )
    after = 0
    while True:
        rows = query(sql, (after, position, PAGE))
        for row in rows:
            oid = row["oid"]
            subject = str(oid if isinstance(oid, UUID) else UUID(str(oid)))
            yield int(row["nid"]), subject, int(row["v"]), str(row["topic"]), bytes(row["state"])
        if len(rows) < PAGE:
            return
        after = int(rows[-1]["nid"])


def check_history(
    query: Any,
    dialect: str,
    table: str,
    policy: PolicyCatalogue,
    now: datetime,
    position: int,
    *,
    verifier: Verifier | None = None,
    allowance: timedelta = SWEEP_ALLOWANCE,
) -> dict[str, Any]:
    """Every check over the events up to `position`, as the report's JSON data."""
    checker = HistoryChecker(policy, allowance)
    recorded = 0
    try:
        for nid, subject, version, topic, state in _events(query, dialect, table, position):
            recorded += 1
            checker.add(nid, subject, version, topic, orjson.loads(state))
    except LedgerError:
        raise
    except Exception as exc:
        raise LedgerError(
            "invalid_command",
            "the compliance report reads the event log itself; it is not available here "
            f"({type(exc).__name__})",
        ) from None
    checker.finish(now)
    checkpoints = check_checkpoints(query, verifier, position)
    violations = [f for f in checker.findings if f["severity"] == "violation"]
    summary = []
    for check, (title, question) in CHECKS.items():
        if check == "checkpoints":
            count = len(checkpoints["problems"])
            ok = checkpoints["consistent_with_all_earlier"] is not False and count == 0
            checked = checkpoints["count"]
        else:
            count = sum(1 for f in violations if f["check"] == check)
            ok = count == 0
            checked = checker.checked[check]
        summary.append(
            {
                "check": check,
                "title": title,
                "question": question,
                "checked": checked,
                "violations": count,
                "ok": ok,
            }
        )
    return {
        "ok": all(item["ok"] for item in summary),
        "events_checked": checker.events,
        "events_recorded": recorded,
        "subjects": len(checker.subjects),
        "sweep_allowance_days": allowance.days,
        "checks": summary,
        "findings": checker.findings,
        "legal_holds": checker.holds,
        "checkpoints": checkpoints,
    }


def _register() -> None:
    """Add `compliance` to the report registry of `ledger.reports` (when it is installed)."""
    from ledger.reports import register_report
    from ledger.reports.model import Report, ReportContext, Section, Table

    @register_report(
        "compliance",
        title="Compliance assertions over the whole history",
        description="the history re-checked against the policy, with the events behind "
        "every finding, and the Merkle log's consistency",
    )
    def compliance(ctx: ReportContext) -> Report:
        if ctx.as_of is not None or ctx.events_table is None:
            raise LedgerError(
                "invalid_command",
                "the compliance report reads the live event log; use --now, not a replay",
            )
        data = check_history(
            ctx.query,
            ctx.cursor.dialect,
            ctx.events_table,
            ctx.policy,
            ctx.now,
            ctx.position,
            verifier=_verifier_from_environment(),
        )
        return Report(
            name="compliance",
            title="Compliance assertions over the whole history",
            summary=_summary_text(data),
            data=data,
            sections=_sections(data, Section, Table),
        )


def _summary_text(data: dict[str, Any]) -> str:
    failed = [c["title"] for c in data["checks"] if not c["ok"]]
    others = data.get("events_recorded", data["events_checked"]) - data["events_checked"]
    head = (
        f"This report re-checks all {data['events_checked']:,} recorded events of "
        f"{data['subjects']:,} data subject{'' if data['subjects'] == 1 else 's'} against the "
        "privacy policy, independently of the checks the ledger made when each event was "
        "recorded, and checks that the signed Merkle log shows the history was never rewritten."
        + (
            f" The log's {others:,} other event{'' if others == 1 else 's'} (the ledger's own "
            "bookkeeping, such as idempotency receipts) hold no facts about a person."
            if others > 0
            else ""
        )
    )
    if not failed:
        return head + " Every assertion holds."
    return head + f" Assertions that do not hold: {'; '.join(failed)}."


def _cite(events: list[dict[str, Any]]) -> str:
    return ", ".join(
        f"#{e['notification_id']} {e['event']} v{e['version']}"
        if e["notification_id"]
        else e["event"]
        for e in events
    )


def _sections(data: dict[str, Any], section: Any, table: Any) -> list[Any]:
    out = [
        section(
            heading="Summary",
            tables=[
                table(
                    columns=["Assertion", "Checked", "Violations", "Holds"],
                    rows=[
                        [c["title"], c["checked"], c["violations"], "yes" if c["ok"] else "NO"]
                        for c in data["checks"]
                    ],
                )
            ],
        )
    ]
    for check in data["checks"]:
        name = check["check"]
        if name in ("holds", "checkpoints"):
            continue
        findings = [f for f in data["findings"] if f["check"] == name]
        out.append(
            section(
                heading=check["title"],
                paragraphs=[check["question"]],
                tables=[
                    table(
                        columns=["Severity", "Subject", "Finding", "Events"],
                        rows=[
                            [f["severity"], f["subject"], f["message"], _cite(f["events"])]
                            for f in findings
                        ],
                        empty=f"No finding: checked {check['checked']:,}.",
                    )
                ],
            )
        )
    holds_title, holds_question = CHECKS["holds"]
    hold_findings = [f for f in data["findings"] if f["check"] == "holds"]
    out.append(
        section(
            heading=holds_title,
            paragraphs=[holds_question],
            tables=[
                table(
                    columns=["Subject", "Hold", "Reason", "Placed", "Released", "Kept"],
                    rows=[
                        [
                            h["subject"],
                            h["hold"],
                            h["reason"],
                            h["placed_at"],
                            h["released_at"] or "in force",
                            "; ".join(f"{k['scope']} ({k['why']})" for k in h["kept"]) or "-",
                        ]
                        for h in data["legal_holds"]
                    ],
                    empty="No legal hold was ever placed.",
                ),
                table(
                    columns=["Severity", "Subject", "Finding", "Events"],
                    rows=[
                        [f["severity"], f["subject"], f["message"], _cite(f["events"])]
                        for f in hold_findings
                    ],
                    empty="No scope was shredded while a hold was in force.",
                ),
            ],
        )
    )
    cp = data["checkpoints"]
    latest = cp["latest"] or {}
    facts = [
        ("Signed checkpoints", f"{cp['count']:,}"),
        ("Latest", f"{latest.get('tree_size', 0):,} events, root {latest.get('root', '-')}"),
        ("Signed at", str(latest.get("created_at", "-"))),
        (
            "Consistent with every earlier checkpoint",
            {True: "yes", False: "NO", None: "-"}[cp["consistent_with_all_earlier"]],
        ),
        (
            "Signatures checked",
            f"yes, with {cp['signature_key']}" if cp["signatures_checked"] else "no (no key)",
        ),
        ("Public key", str(cp["public_key"] or "-")),
        ("Events not yet in a checkpoint", f"{cp['events_after_latest']:,}"),
    ]
    out.append(
        section(
            heading=CHECKS["checkpoints"][0],
            paragraphs=[CHECKS["checkpoints"][1]],
            facts=facts,
            bullets=list(cp["problems"]),
        )
    )
    return out


with contextlib.suppress(ImportError):  # registered when the report package is present
    _register()
