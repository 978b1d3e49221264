"""The DataSubject aggregate: one person's processing history, and the rules that guard it.

Pure domain code. Personal values arrive already sealed through the `Sealer` port, called
only after every rule has passed, so a rejected command never creates a key. Event fields
are plain JSON values (times as RFC 3339 strings) so the stored form is exactly what an
auditor reads.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import MISSING, dataclass, fields
from datetime import date, datetime
from functools import lru_cache
from typing import Any, Protocol
from uuid import UUID

import orjson
from eventsourcing.domain import Aggregate
from eventsourcing.utils import get_topic

from ledger.domain.calendar import iso, later, local_date, parse_iso, request_due_date
from ledger.domain.cpr import InvalidCPR, normalise_cpr
from ledger.domain.policy import PolicyCatalogue, Purpose
from ledger.domain.retention import scope_deadline
from ledger.errors import LedgerError

CPR_GROUNDS = ("law", "consent", "identification")
SOURCES = ("subject", "third_party", "observed", "derived", "system")
SUBJECT_KINDS = (
    "customer",
    "prospect",
    "contact_person",
    "competition_entrant",
    "company_contact",
)
CONSENT_METHODS = ("web_form", "phone_call", "paper", "email", "in_person")
RECIPIENT_KINDS = ("family_member", "general_practitioner", "public_authority", "other")
RELATIONSHIPS = ("customer", "subscription")
RIGHTS = ("access", "rectification", "erasure", "restriction", "objection", "portability")
OUTCOMES = ("fulfilled", "partially_fulfilled", "refused")
NOTICES = ("privacy_policy", "new_purpose")
RECIPIENT_NAME = "recipient_name"  # the sealing binding of a disclosure recipient's name


class Sealer(Protocol):
    """Port: seal one personal value into a subject's scope (the application provides it)."""

    def seal(self, subject: str, scope: str, category: str, value: Any) -> dict[str, str]: ...


def scope_for(
    policy: PolicyCatalogue,
    category: str,
    purpose: str,
    occurred_at: datetime,
    competition: str | None,
) -> str:
    """The retention scope of a value (DESIGN 4.2): its category's class, or the class of
    the purpose it is collected for where the purpose says so (bookkeeping, policy §7)."""
    klass = policy.purposes[purpose].retention or policy.categories[category].retention
    anchor = policy.retention[klass].anchor
    if anchor == "competition_end":
        return f"{klass}:{competition}"
    if anchor == "financial_year_end":
        return f"{klass}:{local_date(occurred_at).year}"
    return klass


def withdraws_all(given: list[str], withdrawn: list[str]) -> bool:
    """Whether a withdrawal ends the consent: one naming no channel, or one that leaves
    none of the channels the consent was given for (consent by channel, then withdrawn
    channel by channel, is withdrawn consent: R5, R8)."""
    return not withdrawn or (bool(given) and set(given) <= set(withdrawn))


def consent_widened(
    current: Mapping[str, Any] | None,
    channels: Iterable[str],
    explicit: bool,
    categories: Iterable[str],
) -> tuple[list[str], bool, list[str]]:
    """The channels, explicitness and categories of a consent just given for a purpose.

    A consent given while one is active adds to it: its channels stay, and so do the
    categories of an explicit one. After a full withdrawal a new consent starts afresh.
    The aggregate, the read models and the audit's replay all keep consents by this rule.
    """
    channels_now, categories_now = set(channels), set(categories)
    if current and current["active"]:
        channels_now |= set(current["channels"])
        if current["explicit"]:
            categories_now |= set(current["categories"])
        explicit = explicit or bool(current["explicit"])
    return sorted(channels_now), explicit, sorted(categories_now)


def retention_class_of(scope: str) -> str:
    return scope.split(":", 1)[0]


@dataclass(frozen=True)
class EraseOutcome:
    shredded: list[str]
    retained: list[dict[str, str | None]]


@lru_cache(maxsize=4096)
def _text(subject_id: UUID) -> str:
    """A subject's id as text: asked for on every command, and `str(UUID)` takes a
    third of a microsecond longer than this cache."""
    return str(subject_id)


class _EventShape:
    """An event class's fields in declared order with their defaults, and the names of
    those without one."""

    def __init__(self, event_class: type[Any]) -> None:
        declared = fields(event_class)
        self.required = frozenset(f.name for f in declared if f.default is MISSING)
        self.defaults: dict[str, Any] = {
            f.name: None if f.name in self.required else f.default for f in declared
        }


_SHAPES: dict[type[Any], _EventShape] = {}


def _new_event(event_class: type[Any], given: dict[str, Any]) -> Any:
    """An event, built as the library's mapper builds one it reads: its `__dict__` set
    whole, in the fields' order. The frozen dataclass's `__init__` sets every field
    through `object.__setattr__` and checks the id's type (always this aggregate's own
    UUID here): a 1,000-command batch takes 7 % fewer instructions this way. A field
    missing or unknown is still a TypeError; the check compares names, not values (a
    value compared with a marker called `UUID.__eq__`, in Python, for every event)."""
    shape = _SHAPES.get(event_class)
    if shape is None:
        shape = _SHAPES[event_class] = _EventShape(event_class)
    state = shape.defaults.copy()
    state.update(given)
    if len(state) != len(shape.defaults) or not given.keys() >= shape.required:
        raise TypeError(f"{event_class.__name__} takes {list(shape.defaults)}, got {sorted(given)}")
    event = object.__new__(event_class)
    object.__setattr__(event, "__dict__", state)
    return event


class DataSubject(Aggregate):
    """A data subject. Its id is a random UUID, never derived from an identifier."""

    # -- events ---------------------------------------------------------------------

    # `class_version = 1` on the events' base classes: the library asks every event's class
    # for it (`getattr(..., 1)`) when storing or reading one, and on a class a missing
    # attribute costs a formatted AttributeError: 0.6-1 % of an append batch's instructions.
    class Registered(Aggregate.Created):
        class_version = 1
        kind: str
        purpose: str
        legal_basis: str
        provided_by: str | None
        occurred_at: str
        actor: str | None

    class Event(Aggregate.Event):
        class_version = 1
        occurred_at: str
        actor: str | None

    class DataCollected(Event):
        category: str
        value: dict[str, str]
        purpose: str
        legal_basis: str
        source: str
        scope: str
        cpr_ground: str | None

        def apply(self, subject: DataSubject) -> None:
            subject.latest[self.category] = {
                "category": self.category,
                "value": self.value,
                "purpose": self.purpose,
                "legal_basis": self.legal_basis,
                "source": self.source,
                "scope": self.scope,
                "collected_at": self.occurred_at,
                "version": self.originator_version,
                "cpr_ground": self.cpr_ground,
            }
            subject.scopes.setdefault(self.scope, {"kids": [], "shredded": {}})
            kids = subject.scopes[self.scope]["kids"]
            if self.value["kid"] not in kids:
                kids.append(self.value["kid"])
            if self.scope == "marketing":
                subject.marketing_registered_at = later(
                    subject.marketing_registered_at, self.occurred_at
                )
            if self.source == "subject":  # the subject gave it to us: contact (policy §7)
                subject.last_dialogue_at = later(subject.last_dialogue_at, self.occurred_at)

    class DataRectified(Event):
        category: str
        value: dict[str, str]
        scope: str
        request: str | None

        def apply(self, subject: DataSubject) -> None:
            previous = subject.latest_item(self.category)
            assert previous is not None
            subject.latest[self.category] = {
                **previous,
                "value": self.value,
                "scope": self.scope,
                "collected_at": self.occurred_at,
                "version": self.originator_version,
                "rectified": True,
            }
            kids = subject.scopes.setdefault(self.scope, {"kids": [], "shredded": {}})["kids"]
            if self.value["kid"] not in kids:
                kids.append(self.value["kid"])

    class ConsentGiven(Event):
        purpose: str
        notice_version: str
        method: str
        channels: list[str]
        explicit: bool
        categories: list[str]

        def apply(self, subject: DataSubject) -> None:
            channels, explicit, categories = consent_widened(
                subject.consents.get(self.purpose), self.channels, self.explicit, self.categories
            )
            subject.consents[self.purpose] = {
                "purpose": self.purpose,
                "active": True,
                "channels": channels,
                "explicit": explicit,
                "categories": categories,
                "notice_version": self.notice_version,
                "method": self.method,
                "given_at": self.occurred_at,
                "withdrawn_at": None,
            }

    class ConsentWithdrawn(Event):
        purpose: str
        channels: list[str]

        def apply(self, subject: DataSubject) -> None:
            current = subject.consents[self.purpose]
            if withdraws_all(current["channels"], self.channels):
                current.update(active=False, channels=[], withdrawn_at=self.occurred_at)
            else:
                current["channels"] = [c for c in current["channels"] if c not in self.channels]

    class Objected(Event):
        purpose: str

        def apply(self, subject: DataSubject) -> None:
            subject.objections[self.purpose] = self.occurred_at

    class Restricted(Event):
        reason: str | None

        def apply(self, subject: DataSubject) -> None:
            subject.restricted = True
            subject.restriction_reason = self.reason

    class RestrictionLifted(Event):
        reason: str | None

        def apply(self, subject: DataSubject) -> None:
            subject.restricted = False
            subject.restriction_reason = None

    class DisclosureAgreed(Event):
        agreement: str
        recipient_kind: str
        recipient_name: dict[str, str]
        country: str
        categories: list[str]
        purpose: str
        valid_until: str | None

        def apply(self, subject: DataSubject) -> None:
            subject.agreements[self.agreement] = {
                "agreement": self.agreement,
                "recipient_kind": self.recipient_kind,
                "recipient_name": self.recipient_name,
                "country": self.country,
                "categories": list(self.categories),
                "purpose": self.purpose,
                "valid_until": self.valid_until,
                "agreed_at": self.occurred_at,
                "revoked_at": None,
            }
            # The name is sealed in customer_data: erasing that scope must destroy its key.
            scope = self.recipient_name["scope"]
            kids = subject.scopes.setdefault(scope, {"kids": [], "shredded": {}})["kids"]
            if self.recipient_name["kid"] not in kids:
                kids.append(self.recipient_name["kid"])

    class DisclosureAgreementRevoked(Event):
        agreement: str

        def apply(self, subject: DataSubject) -> None:
            subject.agreements[self.agreement]["revoked_at"] = self.occurred_at

    class DataDisclosed(Event):
        agreement: str
        categories: list[str]
        recipient_kind: str
        country: str

        def apply(self, subject: DataSubject) -> None:
            subject.disclosures.append(
                {
                    "agreement": self.agreement,
                    "categories": list(self.categories),
                    "recipient_kind": self.recipient_kind,
                    "country": self.country,
                    "disclosed_at": self.occurred_at,
                }
            )

    class DataTransferred(Event):
        categories: list[str]
        country: str
        recipient: str

        def apply(self, subject: DataSubject) -> None:
            subject.transfers.append(
                {
                    "categories": list(self.categories),
                    "country": self.country,
                    "recipient": self.recipient,
                    "transferred_at": self.occurred_at,
                }
            )

    class DataProcessed(Event):
        purpose: str
        activity: str
        channel: str | None
        categories: list[str]
        legal_basis: str | None = None  # when the caller named it (events before had none)

        def apply(self, subject: DataSubject) -> None:
            subject.processing_count += 1

    class RelationshipStarted(Event):
        relationship: str

        def apply(self, subject: DataSubject) -> None:
            subject.relationships[self.relationship] = {
                "relationship": self.relationship,
                "active": True,
                "started_at": self.occurred_at,
                "ended_at": None,
            }

    class RelationshipEnded(Event):
        relationship: str

        def apply(self, subject: DataSubject) -> None:
            subject.relationships[self.relationship].update(active=False, ended_at=self.occurred_at)
            subject.relationship_ended_at = later(subject.relationship_ended_at, self.occurred_at)

    class DialogueRecorded(Event):
        def apply(self, subject: DataSubject) -> None:
            subject.last_dialogue_at = later(subject.last_dialogue_at, self.occurred_at)

    class CompetitionEntered(Event):
        competition: str
        competition_ends_on: str

        def apply(self, subject: DataSubject) -> None:
            subject.competitions[self.competition] = self.competition_ends_on

    class SubjectNotified(Event):
        notice: str
        policy_version: str
        purpose: str | None

        def apply(self, subject: DataSubject) -> None:
            subject.notices.append(
                {
                    "notice": self.notice,
                    "policy_version": self.policy_version,
                    "purpose": self.purpose,
                    "notified_at": self.occurred_at,
                }
            )
            if self.purpose and self.purpose not in subject.notified_purposes:
                subject.notified_purposes.append(self.purpose)

    class LegalHoldPlaced(Event):
        hold: str
        reason: str

        def apply(self, subject: DataSubject) -> None:
            subject.holds[self.hold] = {
                "hold": self.hold,
                "reason": self.reason,
                "placed_at": self.occurred_at,
                "released_at": None,
            }

    class LegalHoldReleased(Event):
        hold: str

        def apply(self, subject: DataSubject) -> None:
            subject.holds[self.hold]["released_at"] = self.occurred_at

    class RequestOpened(Event):
        request: str
        right: str
        received_at: str
        due: str

        def apply(self, subject: DataSubject) -> None:
            subject.requests[self.request] = {
                "request": self.request,
                "right": self.right,
                "received_at": self.received_at,
                "due": self.due,
                "status": "open",
                "verified_at": None,
                "extended_at": None,
                "extension_reason": None,
                "completed_at": None,
                "outcome": None,
            }

    class IdentityVerified(Event):
        request: str

        def apply(self, subject: DataSubject) -> None:
            subject.requests[self.request]["verified_at"] = self.occurred_at

    class RequestExtended(Event):
        request: str
        reason: str
        due: str

        def apply(self, subject: DataSubject) -> None:
            subject.requests[self.request].update(
                due=self.due, extended_at=self.occurred_at, extension_reason=self.reason
            )

    class RequestCompleted(Event):
        request: str
        outcome: str
        note: str | None

        def apply(self, subject: DataSubject) -> None:
            subject.requests[self.request].update(
                status="completed", outcome=self.outcome, completed_at=self.occurred_at
            )

    class ErasureCarriedOut(Event):
        request: str | None
        shredded: list[str]
        retained: list[dict[str, str | None]]

        def apply(self, subject: DataSubject) -> None:
            subject.erased_at = self.occurred_at

    class ScopeShredded(Event):
        scope: str
        kids: list[str]
        reason: str
        deadline: str | None

        def apply(self, subject: DataSubject) -> None:
            state = subject.scopes.setdefault(self.scope, {"kids": [], "shredded": {}})
            for kid in self.kids:
                state["shredded"][kid] = self.occurred_at
            if self.reason != "erasure":
                subject.retention_shredded = True

    class DataViewed(Event):
        purpose: str
        categories: list[str]

        def apply(self, subject: DataSubject) -> None:
            subject.views += 1

    # -- construction -----------------------------------------------------------------

    def __init__(
        self,
        kind: str,
        purpose: str,
        legal_basis: str,
        provided_by: str | None,
        occurred_at: str,
        actor: str | None,
    ) -> None:
        self.kind = kind
        self.purpose = purpose
        self.legal_basis = legal_basis
        self.provided_by = provided_by
        self.registered_at = occurred_at
        # The newest item of each category: what the rules need, and bounded by the number
        # of categories however long the history (older values live in the read models).
        self.latest: dict[str, dict[str, Any]] = {}
        self.scopes: dict[str, dict[str, Any]] = {}
        self.consents: dict[str, dict[str, Any]] = {}
        self.objections: dict[str, str] = {}
        self.restricted = False
        self.restriction_reason: str | None = None
        self.agreements: dict[str, dict[str, Any]] = {}
        self.disclosures: list[dict[str, Any]] = []
        self.transfers: list[dict[str, Any]] = []
        self.relationships: dict[str, dict[str, Any]] = {}
        self.relationship_ended_at: str | None = None
        self.last_dialogue_at: str | None = None
        self.marketing_registered_at: str | None = None
        self.competitions: dict[str, str] = {}
        self.notices: list[dict[str, Any]] = []
        self.notified_purposes: list[str] = []
        self.holds: dict[str, dict[str, Any]] = {}
        self.requests: dict[str, dict[str, Any]] = {}
        self.erased_at: str | None = None
        self.retention_shredded = False
        self.processing_count = 0
        self.views = 0

    @classmethod
    def register(
        cls,
        subject_id: UUID,
        *,
        policy: PolicyCatalogue,
        kind: str,
        purpose: str,
        legal_basis: str,
        provided_by: str | None,
        occurred_at: datetime,
        actor: str | None,
    ) -> DataSubject:
        if kind not in SUBJECT_KINDS:
            raise LedgerError("invalid_command", f"unknown subject kind '{kind}'")
        _purpose_with_basis(policy, purpose, legal_basis)
        # the library's `_create`, for an aggregate with neither an explicit topic nor
        # `create_id`, with the event built by `_new_event`
        registered = _new_event(
            cls.Registered,
            {
                "originator_topic": get_topic(cls),
                "originator_id": subject_id,
                "originator_version": cls.INITIAL_VERSION,
                "timestamp": cls.Registered.create_timestamp(),
                "kind": kind,
                "purpose": purpose,
                "legal_basis": legal_basis,
                "provided_by": provided_by,
                "occurred_at": iso(occurred_at),
                "actor": actor,
            },
        )
        subject: DataSubject = registered.mutate(None)
        subject.pending_events.append(registered)
        return subject

    def trigger_event(self, event_class: type[Any], **kwargs: Any) -> None:
        """The library's `trigger_event` without the steps this aggregate does not need:
        a check for explicitly registered topics (it has none), a copy of the arguments
        (`_new_event` builds the event), and `mutate`'s checks that the event is this
        aggregate's next one, which it is by construction (the id check called
        `UUID.__eq__`, in Python). Every command triggers at least one event."""
        version = self.version + 1
        kwargs["originator_id"] = self.id
        kwargs["originator_version"] = version
        kwargs["timestamp"] = timestamp = event_class.create_timestamp()
        new_event = _new_event(event_class, kwargs)
        new_event.apply(self)  # what `mutate` does after its checks
        self.version = version
        self.modified_on = timestamp
        self._pending_events.append(new_event)

    def __deepcopy__(self, memo: dict[int, Any]) -> DataSubject:
        """A fast deep copy (the repository's cache copies on every load).

        State is plain JSON containers, so a JSON round trip copies it several times
        faster than `copy.deepcopy`.
        """
        clone = object.__new__(type(self))
        for name, value in self.__dict__.items():
            if name == "_pending_events":
                value = list(value)
            elif isinstance(value, (dict, list)):
                value = orjson.loads(orjson.dumps(value))
            elif isinstance(value, set):
                value = set(value)
            clone.__dict__[name] = value
        return clone

    # -- queries over state -----------------------------------------------------------

    @property
    def subject_id(self) -> str:
        return _text(self.id)

    @property
    def erased(self) -> bool:
        return self.erased_at is not None

    @property
    def status(self) -> str:
        if self.erased:
            return "erased"
        if self.retention_shredded:
            return "partially_erased"
        return "active"

    def is_shredded(self, sealed: dict[str, str]) -> bool:
        state = self.scopes.get(sealed["scope"])
        return bool(state and sealed["kid"] in state["shredded"])

    def latest_item(self, category: str) -> dict[str, Any] | None:
        return self.latest.get(category)

    def latest_items(self) -> list[dict[str, Any]]:
        """The newest value of each category, in order of first collection."""
        return list(self.latest.values())

    def has_on_file(self, category: str) -> bool:
        item = self.latest_item(category)
        return item is not None and not self.is_shredded(item["value"])

    def live_kids(self, scope: str) -> list[str]:
        state = self.scopes.get(scope)
        if not state:
            return []
        return [kid for kid in state["kids"] if kid not in state["shredded"]]

    def active_holds(self) -> list[dict[str, Any]]:
        return [h for h in self.holds.values() if h["released_at"] is None]

    def has_active_relationship(self) -> bool:
        return any(r["active"] for r in self.relationships.values())

    def consent_active(self, purpose: str, channel: str | None = None) -> bool:
        consent = self.consents.get(purpose)
        if not consent or not consent["active"]:
            return False
        return channel is None or channel in consent["channels"]

    def explicit_consent_for(self, purpose: str, category: str) -> bool:
        consent = self.consents.get(purpose)
        return bool(
            consent
            and consent["active"]
            and consent["explicit"]
            and category in consent["categories"]
        )

    # -- rules shared by commands -----------------------------------------------------

    def _not_erased(self, what: str) -> None:
        if self.erased:
            raise LedgerError("subject_erased", f"subject {self.id} was erased: no {what}")

    def _not_restricted(self, what: str) -> None:
        if self.restricted:
            raise LedgerError(
                "restricted", f"processing of subject {self.id} is restricted: no {what}"
            )

    def _notified_of(self, policy: PolicyCatalogue, purpose: Purpose) -> None:
        if policy.is_new_purpose(purpose) and purpose.name not in self.notified_purposes:
            raise LedgerError(
                "purpose_not_notified",
                f"purpose '{purpose.name}' was added after the policy took effect; "
                "notify the subject first (notify_subject, notice new_purpose)",
            )

    def _not_objected(self, purpose: Purpose, legal_basis: str | None) -> None:
        if purpose.name not in self.objections:
            return
        if purpose.direct_marketing or legal_basis in (None, "legitimate_interest"):
            raise LedgerError("objected", f"the subject objected to purpose '{purpose.name}'")

    def _consent_for(self, purpose: Purpose, legal_basis: str | None, channel: str | None) -> None:
        if legal_basis == "consent" and not self.consent_active(purpose.name):
            raise LedgerError("consent_required", f"no active consent for purpose '{purpose.name}'")
        if (
            channel is not None
            and channel in purpose.consent_channels
            and not self.consent_active(purpose.name, channel)
        ):
            raise LedgerError(
                "consent_required",
                f"no active consent for purpose '{purpose.name}' on channel '{channel}'",
            )

    def _known_categories(self, policy: PolicyCatalogue, categories: list[str]) -> None:
        for category in categories:
            if category not in policy.categories:
                # the name is not repeated: an unknown one may be anything, a value too
                raise LedgerError(
                    "unknown_category",
                    "a category given is not in the policy; its categories are: "
                    + ", ".join(sorted(policy.categories)),
                )

    # -- commands ---------------------------------------------------------------------

    def collect(
        self,
        *,
        policy: PolicyCatalogue,
        sealer: Sealer,
        category: str,
        value: Any,
        purpose: str,
        legal_basis: str,
        source: str,
        occurred_at: datetime,
        actor: str | None,
        competition: str | None = None,
        cpr_ground: str | None = None,
    ) -> None:
        """R1–R5, R7, R9, R12, R17, then seal and record."""
        if self.erased and legal_basis != "legal_obligation":
            self._not_erased("collection except under a legal obligation")
        self._known_categories(policy, [category])
        the_purpose = _purpose_with_basis(policy, purpose, legal_basis)
        _purpose_allows(the_purpose, [category])
        if source not in SOURCES:
            raise LedgerError("invalid_command", f"unknown source '{source}'")
        if category == "cpr":
            check_cpr(value, cpr_ground)
            if cpr_ground == "consent" and not self.consent_active(purpose):
                raise LedgerError(
                    "consent_required",
                    f"CPR on ground 'consent' needs an active consent for '{purpose}'",
                )
        elif cpr_ground is not None:
            raise LedgerError("invalid_command", "cpr_ground applies to category 'cpr' only")
        category_spec = policy.categories[category]
        if category_spec.sensitive:
            if source != "subject":
                raise LedgerError(
                    "sensitive_requires_subject_source",
                    f"sensitive category '{category}' may only come from the subject",
                )
            if not self.explicit_consent_for(purpose, category):
                raise LedgerError(
                    "explicit_consent_required",
                    f"sensitive category '{category}' needs explicit consent for '{purpose}'",
                )
        self._notified_of(policy, the_purpose)
        if legal_basis != "legal_obligation":
            self._not_restricted("collection")
        self._not_objected(the_purpose, legal_basis)
        self._consent_for(the_purpose, legal_basis, None)
        if category_spec.retention == "competition":
            if not competition:
                raise LedgerError(
                    "invalid_command", f"category '{category}' needs the field 'competition'"
                )
            if competition not in self.competitions:
                raise LedgerError(
                    "invalid_command",
                    "the subject has not entered this competition (enter_competition)",
                )
        elif competition is not None:
            raise LedgerError(
                "invalid_command", "'competition' applies to competition entries only"
            )
        scope = scope_for(policy, category, purpose, occurred_at, competition)
        stored = normalise_cpr(str(value)) if category == "cpr" else value
        sealed = sealer.seal(self.subject_id, scope, category, stored)
        self.trigger_event(
            self.DataCollected,
            category=category,
            value=sealed,
            purpose=purpose,
            legal_basis=legal_basis,
            source=source,
            scope=scope,
            cpr_ground=cpr_ground,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def rectify(
        self,
        *,
        policy: PolicyCatalogue,
        sealer: Sealer,
        category: str,
        value: Any,
        request: str | None,
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        """Art. 16: a new value for data on file; allowed while restricted (its remedy)."""
        self._not_erased("rectification")
        self._known_categories(policy, [category])
        if request is not None:
            self._open_request(request)
        previous = self.latest_item(category)
        if previous is None or self.is_shredded(previous["value"]):
            raise LedgerError(
                "invalid_command", f"no '{category}' on file to rectify (use collect)"
            )
        if category == "cpr":
            check_cpr(value, previous.get("cpr_ground") or "law")
            value = normalise_cpr(str(value))
        scope = previous["scope"]
        sealed = sealer.seal(self.subject_id, scope, category, value)
        self.trigger_event(
            self.DataRectified,
            category=category,
            value=sealed,
            scope=scope,
            request=request,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def give_consent(
        self,
        *,
        policy: PolicyCatalogue,
        purpose: str,
        notice_version: str,
        method: str,
        channels: list[str],
        explicit: bool,
        categories: list[str],
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        self._not_erased("new consent")
        the_purpose = _known_purpose(policy, purpose)
        if method not in CONSENT_METHODS:
            raise LedgerError("invalid_command", f"unknown consent method '{method}'")
        self._known_categories(policy, categories)
        _purpose_allows(the_purpose, categories)
        if categories and not explicit:
            raise LedgerError(
                "invalid_command", "consent naming categories must be explicit (explicit: true)"
            )
        self._notified_of(policy, the_purpose)
        self.trigger_event(
            self.ConsentGiven,
            purpose=purpose,
            notice_version=notice_version,
            method=method,
            channels=sorted(set(channels)),
            explicit=explicit,
            categories=sorted(set(categories)),
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def withdraw_consent(
        self,
        *,
        policy: PolicyCatalogue,
        purpose: str,
        channels: list[str],
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        """R8: always possible; past processing stays lawful and in the history."""
        _known_purpose(policy, purpose)
        if not self.consent_active(purpose):
            raise LedgerError("consent_required", f"no active consent for purpose '{purpose}'")
        self.trigger_event(
            self.ConsentWithdrawn,
            purpose=purpose,
            channels=sorted(set(channels)),
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def object(
        self, *, policy: PolicyCatalogue, purpose: str, occurred_at: datetime, actor: str | None
    ) -> None:
        """R6/R7: recorded for any known purpose; it bites where Art. 21 applies."""
        the_purpose = _known_purpose(policy, purpose)
        if not (the_purpose.direct_marketing or "legitimate_interest" in the_purpose.legal_bases):
            raise LedgerError(
                "legal_basis_not_allowed",
                f"purpose '{purpose}' rests on neither legitimate interest nor direct marketing; "
                "Art. 21 gives no objection to it",
            )
        self.trigger_event(
            self.Objected, purpose=purpose, occurred_at=iso(occurred_at), actor=actor
        )

    def restrict(self, *, reason: str | None, occurred_at: datetime, actor: str | None) -> None:
        self.trigger_event(
            self.Restricted, reason=reason, occurred_at=iso(occurred_at), actor=actor
        )

    def lift_restriction(
        self, *, reason: str | None, occurred_at: datetime, actor: str | None
    ) -> None:
        if not self.restricted:
            raise LedgerError(
                "invalid_command", f"processing of subject {self.id} is not restricted"
            )
        self.trigger_event(
            self.RestrictionLifted, reason=reason, occurred_at=iso(occurred_at), actor=actor
        )

    def agree_disclosure(
        self,
        *,
        policy: PolicyCatalogue,
        sealer: Sealer,
        agreement: str,
        recipient_kind: str,
        recipient_name: str,
        country: str,
        categories: list[str],
        purpose: str,
        valid_until: date | None,
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        self._not_erased("new disclosure agreement")
        if recipient_kind not in RECIPIENT_KINDS:
            raise LedgerError("invalid_command", f"unknown recipient kind '{recipient_kind}'")
        self._known_categories(policy, categories)
        the_purpose = _known_purpose(policy, purpose)
        _purpose_allows(the_purpose, categories)
        _inside_eu(policy, country)
        sealed = sealer.seal(self.subject_id, "customer_data", RECIPIENT_NAME, recipient_name)
        self.trigger_event(
            self.DisclosureAgreed,
            agreement=agreement,
            recipient_kind=recipient_kind,
            recipient_name=sealed,
            country=country,
            categories=sorted(set(categories)),
            purpose=purpose,
            valid_until=valid_until.isoformat() if valid_until else None,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def revoke_disclosure_agreement(
        self, *, agreement: str, occurred_at: datetime, actor: str | None
    ) -> None:
        found = self.agreements.get(agreement)
        if found is None:
            raise LedgerError("unknown_agreement", f"no disclosure agreement {agreement}")
        if found["revoked_at"] is not None:
            raise LedgerError(
                "invalid_command", f"disclosure agreement {agreement} is already revoked"
            )
        self.trigger_event(
            self.DisclosureAgreementRevoked,
            agreement=agreement,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def disclose(
        self,
        *,
        policy: PolicyCatalogue,
        agreement: str,
        categories: list[str],
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        """R9–R11: only under a valid agreement made in advance, for those categories."""
        self._not_erased("disclosure")
        self._known_categories(policy, categories)
        self._not_restricted("disclosure")
        found = self.agreements.get(agreement)
        if found is None:
            raise LedgerError("no_disclosure_agreement", f"no disclosure agreement {agreement}")
        if found["revoked_at"] is not None:
            raise LedgerError(
                "no_disclosure_agreement", f"disclosure agreement {agreement} was revoked"
            )
        if found["valid_until"] and local_date(occurred_at) > date.fromisoformat(
            found["valid_until"]
        ):
            raise LedgerError(
                "no_disclosure_agreement", f"disclosure agreement {agreement} has expired"
            )
        if parse_iso(found["agreed_at"]) > occurred_at:
            raise LedgerError(
                "no_disclosure_agreement",
                f"disclosure agreement {agreement} was made after the disclosure",
            )
        outside = sorted(set(categories) - set(found["categories"]))
        if outside:
            raise LedgerError(
                "no_disclosure_agreement",
                f"disclosure agreement {agreement} does not cover: {', '.join(outside)}",
            )
        _inside_eu(policy, found["country"])
        self.trigger_event(
            self.DataDisclosed,
            agreement=agreement,
            categories=sorted(set(categories)),
            recipient_kind=found["recipient_kind"],
            country=found["country"],
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def transfer(
        self,
        *,
        policy: PolicyCatalogue,
        categories: list[str],
        country: str,
        recipient: str,
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        self._not_erased("transfer")
        self._known_categories(policy, categories)
        _inside_eu(policy, country)
        self._not_restricted("transfer")
        self.trigger_event(
            self.DataTransferred,
            categories=sorted(set(categories)),
            country=country,
            recipient=recipient,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def process(
        self,
        *,
        policy: PolicyCatalogue,
        purpose: str,
        activity: str,
        channel: str | None,
        categories: list[str],
        occurred_at: datetime,
        actor: str | None,
        legal_basis: str | None = None,
    ) -> None:
        """R5–R9, R12, R17 for a processing act (marketing sends, analyses, ...).

        Without a legal basis the act may rest on any of the purpose's, so an objection to
        the purpose stops it (R7, the safe reading); naming one that is not legitimate
        interest (a contract, a legal obligation) lets it go on after an objection, which
        only stops what rests on legitimate interest (Art. 21(1)) or direct marketing.
        """
        if legal_basis is None:
            the_purpose = _known_purpose(policy, purpose)
        else:
            the_purpose = _purpose_with_basis(policy, purpose, legal_basis)
        bases = (legal_basis,) if legal_basis is not None else the_purpose.legal_bases
        if bases != ("legal_obligation",):
            self._not_erased("processing")
        self._known_categories(policy, categories)
        _purpose_allows(the_purpose, categories)
        self._notified_of(policy, the_purpose)
        self._not_restricted("processing")
        self._not_objected(the_purpose, legal_basis)
        self._consent_for(the_purpose, "consent" if bases == ("consent",) else None, channel)
        self.trigger_event(
            self.DataProcessed,
            purpose=purpose,
            activity=activity,
            channel=channel,
            categories=sorted(set(categories)),
            legal_basis=legal_basis,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def start_relationship(
        self,
        *,
        policy: PolicyCatalogue,
        relationship: str,
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        """R13: name, address and phone on file before someone becomes a customer."""
        self._not_erased("new relationship")
        if relationship not in RELATIONSHIPS:
            raise LedgerError("invalid_command", f"unknown relationship '{relationship}'")
        missing = [c for c in policy.mandatory_customer_categories if not self.has_on_file(c)]
        if missing:
            raise LedgerError(
                "missing_mandatory_data",
                f"to become a customer these must be on file: {', '.join(missing)}",
            )
        current = self.relationships.get(relationship)
        if current and current["active"]:
            raise LedgerError("invalid_command", f"relationship '{relationship}' is already active")
        self.trigger_event(
            self.RelationshipStarted,
            relationship=relationship,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def end_relationship(
        self, *, relationship: str, occurred_at: datetime, actor: str | None
    ) -> None:
        current = self.relationships.get(relationship)
        if not current or not current["active"]:
            raise LedgerError("invalid_command", f"relationship '{relationship}' is not active")
        self.trigger_event(
            self.RelationshipEnded,
            relationship=relationship,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def record_dialogue(self, *, occurred_at: datetime, actor: str | None) -> None:
        self._not_erased("dialogue")
        self.trigger_event(self.DialogueRecorded, occurred_at=iso(occurred_at), actor=actor)

    def enter_competition(
        self,
        *,
        policy: PolicyCatalogue,
        competition: str,
        ends_on: date,
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        self._not_erased("competition entry")
        if "competition" in policy.purposes:
            the_purpose = policy.purposes["competition"]
            self._notified_of(policy, the_purpose)
            self._not_restricted("competition entry")
            self._not_objected(the_purpose, None)
            basis = "consent" if the_purpose.legal_bases == ("consent",) else None
            self._consent_for(the_purpose, basis, None)
        self.trigger_event(
            self.CompetitionEntered,
            competition=competition,
            competition_ends_on=ends_on.isoformat(),
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def notify(
        self,
        *,
        policy: PolicyCatalogue,
        notice: str,
        policy_version: str,
        purpose: str | None,
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        if notice not in NOTICES:
            raise LedgerError("invalid_command", f"unknown notice '{notice}'")
        if purpose is not None:
            _known_purpose(policy, purpose)
        elif notice == "new_purpose":
            raise LedgerError("invalid_command", "a new_purpose notice names its 'purpose'")
        self.trigger_event(
            self.SubjectNotified,
            notice=notice,
            policy_version=policy_version,
            purpose=purpose,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def place_legal_hold(
        self, *, hold: str, reason: str, occurred_at: datetime, actor: str | None
    ) -> None:
        self.trigger_event(
            self.LegalHoldPlaced,
            hold=hold,
            reason=reason,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    def release_legal_hold(self, *, hold: str, occurred_at: datetime, actor: str | None) -> None:
        found = self.holds.get(hold)
        if found is None:
            raise LedgerError("unknown_hold", f"no legal hold {hold}")
        if found["released_at"] is not None:
            raise LedgerError("invalid_command", f"legal hold {hold} is already released")
        self.trigger_event(
            self.LegalHoldReleased, hold=hold, occurred_at=iso(occurred_at), actor=actor
        )

    # -- requests (R16) ---------------------------------------------------------------

    def _request(self, request: str) -> dict[str, Any]:
        found = self.requests.get(request)
        if found is None:
            raise LedgerError("unknown_request", f"no request {request} for subject {self.id}")
        return found

    def _open_request(self, request: str) -> dict[str, Any]:
        found = self._request(request)
        if found["status"] != "open":
            raise LedgerError("request_closed", f"request {request} is already completed")
        return found

    def open_request(
        self,
        *,
        request: str,
        right: str,
        received_at: datetime,
        occurred_at: datetime,
        actor: str | None,
    ) -> str:
        if right not in RIGHTS:
            raise LedgerError("invalid_command", f"unknown right '{right}'")
        if received_at > occurred_at:  # a receipt after the opening would push the deadline
            raise LedgerError(
                "invalid_command", "field 'received_at' is later than the request was opened"
            )
        due = request_due_date(local_date(received_at))
        self.trigger_event(
            self.RequestOpened,
            request=request,
            right=right,
            received_at=iso(received_at),
            due=due.isoformat(),
            occurred_at=iso(occurred_at),
            actor=actor,
        )
        return due.isoformat()

    def _not_before_receipt(self, found: dict[str, Any], occurred_at: datetime, what: str) -> None:
        """Nothing happens to a request before it was received (R16's record would lie)."""
        if occurred_at < parse_iso(found["received_at"]):
            raise LedgerError(
                "invalid_command",
                f"request {found['request']} cannot be {what} before it was received",
            )

    def verify_identity(self, *, request: str, occurred_at: datetime, actor: str | None) -> None:
        self._not_before_receipt(self._open_request(request), occurred_at, "verified")
        self.trigger_event(
            self.IdentityVerified, request=request, occurred_at=iso(occurred_at), actor=actor
        )

    def extend_request(
        self, *, request: str, reason: str, occurred_at: datetime, actor: str | None
    ) -> str:
        """Art. 12(3): within the first month only, to three months after receipt."""
        found = self._open_request(request)
        if found["extended_at"] is not None:
            raise LedgerError("extension_too_late", f"request {request} was already extended")
        self._not_before_receipt(found, occurred_at, "extended")
        received = local_date(parse_iso(found["received_at"]))
        # The first month is a period of Regulation 1182/71 too: it ends on the due date.
        if local_date(occurred_at) > request_due_date(received):
            raise LedgerError(
                "extension_too_late",
                f"request {request} can be extended only within the first month after receipt",
            )
        due = request_due_date(received, 3)
        self.trigger_event(
            self.RequestExtended,
            request=request,
            reason=reason,
            due=due.isoformat(),
            occurred_at=iso(occurred_at),
            actor=actor,
        )
        return due.isoformat()

    def complete_request(
        self,
        *,
        request: str,
        outcome: str,
        note: str | None,
        occurred_at: datetime,
        actor: str | None,
    ) -> None:
        if outcome not in OUTCOMES:
            raise LedgerError("invalid_command", f"unknown outcome '{outcome}'")
        self._not_before_receipt(self._open_request(request), occurred_at, "completed")
        self.trigger_event(
            self.RequestCompleted,
            request=request,
            outcome=outcome,
            note=note,
            occurred_at=iso(occurred_at),
            actor=actor,
        )

    # -- erasure and retention --------------------------------------------------------

    def scopes_in_use(self) -> list[str]:
        """Every scope that still has a live key generation in the history."""
        return [scope for scope in self.scopes if self.live_kids(scope)]

    def erase(
        self,
        *,
        policy: PolicyCatalogue,
        request: str | None,
        occurred_at: datetime,
        actor: str | None,
    ) -> EraseOutcome:
        """Art. 17: shred every scope no legal obligation or hold keeps; say what was kept."""
        if request is not None:
            found = self._open_request(request)
            if found["right"] != "erasure":
                raise LedgerError(
                    "invalid_command",
                    f"request {request} is a request for {found['right']}, not for erasure",
                )
            self._not_before_receipt(found, occurred_at, "answered by an erasure")
        held = self.active_holds()
        shredded: list[str] = []
        retained: list[dict[str, str | None]] = []
        today = local_date(occurred_at)
        for scope in self.scopes_in_use():
            klass = policy.retention.get(retention_class_of(scope))
            if held:
                retained.append({"scope": scope, "reason": "legal_hold", "until": None})
                continue
            if klass is not None and klass.legal_obligation:
                deadline = scope_deadline(self, policy, scope)
                if deadline is None or deadline > today:
                    retained.append(
                        {
                            "scope": scope,
                            "reason": "legal_obligation",
                            "until": deadline.isoformat() if deadline else None,
                        }
                    )
                    continue
            shredded.append(scope)
        self.trigger_event(
            self.ErasureCarriedOut,
            request=request,
            shredded=shredded,
            retained=retained,
            occurred_at=iso(occurred_at),
            actor=actor,
        )
        for scope in shredded:
            self.shred_scope(
                scope=scope, reason="erasure", deadline=None, occurred_at=occurred_at, actor=actor
            )
        return EraseOutcome(shredded=shredded, retained=retained)

    def shred_scope(
        self,
        *,
        scope: str,
        reason: str,
        deadline: date | None,
        occurred_at: datetime,
        actor: str | None,
    ) -> list[str]:
        """Record a scope's shredding; the application destroys the keys after saving."""
        kids = self.live_kids(scope)
        if not kids:
            return []
        self.trigger_event(
            self.ScopeShredded,
            scope=scope,
            kids=kids,
            reason=reason,
            deadline=deadline.isoformat() if deadline else None,
            occurred_at=iso(occurred_at),
            actor=actor,
        )
        return kids

    def record_view(
        self, *, purpose: str, categories: list[str], occurred_at: datetime, actor: str | None
    ) -> None:
        """CJEU C-579/21: who read plaintext, when and why, for the subject's access report."""
        if not purpose.strip():
            raise LedgerError("invalid_command", "revealing personal data needs a purpose")
        self.trigger_event(
            self.DataViewed,
            purpose=purpose,
            categories=sorted(set(categories)),
            occurred_at=iso(occurred_at),
            actor=actor,
        )


def _purpose_allows(purpose: Purpose, categories: list[str]) -> None:
    for category in categories:
        if category not in purpose.categories:
            raise LedgerError(
                "purpose_not_allowed",
                f"purpose '{purpose.name}' does not allow category '{category}'",
            )


def _known_purpose(policy: PolicyCatalogue, purpose: str) -> Purpose:
    found = policy.purposes.get(purpose)
    if found is None:
        raise LedgerError(  # the name is not repeated: an unknown one may be anything
            "unknown_purpose",
            "the purpose given is not in the policy; its purposes are: "
            + ", ".join(sorted(policy.purposes)),
        )
    return found


def _purpose_with_basis(policy: PolicyCatalogue, purpose: str, legal_basis: str) -> Purpose:
    found = _known_purpose(policy, purpose)
    if legal_basis not in found.legal_bases:
        raise LedgerError(
            "legal_basis_not_allowed",
            f"purpose '{purpose}' allows the legal bases {', '.join(found.legal_bases)}, "
            f"not '{legal_basis}'",
        )
    return found


def check_cpr(value: Any, ground: str | None) -> None:
    if ground is None:
        raise LedgerError(
            "cpr_ground_required",
            "a CPR number needs a ground under databeskyttelsesloven §11(2): "
            "law, consent or identification",
        )
    if ground not in CPR_GROUNDS:
        raise LedgerError("invalid_command", f"unknown cpr_ground '{ground}'")
    if not isinstance(value, str):
        raise LedgerError("invalid_cpr", "a CPR number is a string of ten digits")
    try:
        normalise_cpr(value)
    except InvalidCPR:
        raise LedgerError("invalid_cpr", "not a valid CPR number") from None


def _inside_eu(policy: PolicyCatalogue, country: str) -> None:
    if country not in policy.eu_countries:
        raise LedgerError(
            "transfer_outside_eu",
            f"country '{country}' is outside the EU; the policy forbids transfers there",
        )
