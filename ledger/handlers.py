"""One handler per command type (DESIGN 5.1): a command's fields become a call of the
aggregate's method.

A handler finds its subject in the unit of work (loading it once), lets the aggregate
check the rules and seal the values, notes the identifiers the lookup index will need,
and returns what the result carries besides `ok`: a new subject's, agreement's, hold's
or request's id, a request's due date, what an erasure shredded and kept.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import datetime
from typing import Any
from uuid import UUID

from ledger.commands import Command
from ledger.crypto.lookup import LOOKUP_KINDS, lookup_digest, normalise_identifier
from ledger.domain.policy import PolicyCatalogue
from ledger.domain.subject import DataSubject, check_cpr
from ledger.errors import LedgerError
from ledger.unit_of_work import ScopeSealer, UnitOfWork

Handler = Callable[[UnitOfWork, ScopeSealer, Command, datetime], dict[str, Any]]


class CommandHandlers:
    """The handlers, with what they need from the application: the policy, the lookup
    key (read when an identifier is first indexed) and a way to load a subject."""

    def __init__(
        self,
        policy: PolicyCatalogue,
        lookup_key: Callable[[], bytes],
        load_subject: Callable[[str], DataSubject],
    ) -> None:
        self.policy = policy
        self.lookup_key = lookup_key
        self.load_subject = load_subject

    def handler(self, command_type: str) -> Handler:
        """The handler of a command type (the schema in `commands` admits known types only)."""
        found: Handler = getattr(self, f"_do_{command_type}")
        return found

    def _subject(self, uow: UnitOfWork, command: Command) -> DataSubject:
        subject_id = command.subject
        assert subject_id is not None
        found = uow.subjects.get(subject_id)
        if found is None:
            found = self.load_subject(subject_id)
            uow.subjects[subject_id] = found
        return found

    # -- index ------------------------------------------------------------------------

    def _digest(self, kind: str, value: Any) -> bytes | None:
        """The lookup digest of an identifier category (validating its form), else None."""
        if kind not in LOOKUP_KINDS:
            return None
        if not isinstance(value, str):
            raise LedgerError("invalid_command", f"a {kind} identifier must be a string")
        try:
            normalised = normalise_identifier(kind, value)
        except ValueError:
            code = "invalid_cpr" if kind == "cpr" else "invalid_command"
            raise LedgerError(code, f"not a valid {kind}") from None
        return lookup_digest(self.lookup_key(), kind, normalised)

    def _index(
        self, uow: UnitOfWork, subject: DataSubject, kind: str, digest: bytes | None
    ) -> None:
        if digest is not None:
            uow.lookups.setdefault(subject.subject_id, {})[kind] = digest

    # -- handlers: one per command type (DESIGN 5.1) ----------------------------------

    def _do_register_subject(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        subject_id = c.get("subject") or str(uuid.uuid4())
        if subject_id in uow.subjects or subject_id in uow.registered:
            raise LedgerError("duplicate", f"subject {subject_id} is already registered")
        provided_by = c.get("provided_by")
        if provided_by is not None and provided_by not in uow.subjects:
            self.load_subject(provided_by)
        identifiers: dict[str, str] = c.get("identifiers") or {}
        if c.get("cpr_ground") and "cpr" not in identifiers:
            raise LedgerError("invalid_command", "cpr_ground given without a cpr identifier")
        subject = DataSubject.register(
            UUID(subject_id),
            policy=self.policy,
            kind=c.fields["kind"],
            purpose=c.fields["purpose"],
            legal_basis=c.fields["legal_basis"],
            provided_by=provided_by,
            occurred_at=at,
            actor=c.actor,
        )
        digests = {kind: self._digest(kind, value) for kind, value in identifiers.items()}
        if "cpr" in identifiers:
            check_cpr(identifiers["cpr"], c.get("cpr_ground"))
        for kind in ("cpr", "email", "phone", "customer_number", "cvr"):
            if kind not in identifiers:
                continue
            subject.collect(
                policy=self.policy,
                sealer=sealer,
                category=kind,
                value=identifiers[kind],
                purpose=c.fields["purpose"],
                legal_basis=c.fields["legal_basis"],
                source="third_party" if provided_by else "subject",
                occurred_at=at,
                actor=c.actor,
                cpr_ground=c.get("cpr_ground") if kind == "cpr" else None,
            )
        uow.subjects[subject_id] = subject
        for kind, digest in digests.items():
            self._index(uow, subject, kind, digest)
        return {"subject": subject_id}

    def _do_collect(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        subject = self._subject(uow, c)
        category = c.fields["category"]
        value = c.fields["value"]
        digest = self._digest(category, value) if category != "cpr" else None
        subject.collect(
            policy=self.policy,
            sealer=sealer,
            category=category,
            value=value,
            purpose=c.fields["purpose"],
            legal_basis=c.fields["legal_basis"],
            source=c.fields["source"],
            occurred_at=at,
            actor=c.actor,
            competition=c.get("competition"),
            cpr_ground=c.get("cpr_ground"),
        )
        if category == "cpr":
            digest = self._digest(category, value)
        self._index(uow, subject, category, digest)
        return {}

    def _do_rectify(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        subject = self._subject(uow, c)
        digest = self._digest(c.fields["category"], c.fields["value"])
        subject.rectify(
            policy=self.policy,
            sealer=sealer,
            category=c.fields["category"],
            value=c.fields["value"],
            request=c.get("request"),
            occurred_at=at,
            actor=c.actor,
        )
        self._index(uow, subject, c.fields["category"], digest)
        return {}

    def _do_give_consent(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).give_consent(
            policy=self.policy,
            purpose=c.fields["purpose"],
            notice_version=c.fields["notice_version"],
            method=c.fields["method"],
            channels=c.get("channels") or [],
            explicit=bool(c.get("explicit", False)),
            categories=c.get("categories") or [],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_withdraw_consent(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).withdraw_consent(
            policy=self.policy,
            purpose=c.fields["purpose"],
            channels=c.get("channels") or [],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_object(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).object(
            policy=self.policy, purpose=c.fields["purpose"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_restrict(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).restrict(reason=c.get("reason"), occurred_at=at, actor=c.actor)
        return {}

    def _do_lift_restriction(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).lift_restriction(
            reason=c.get("reason"), occurred_at=at, actor=c.actor
        )
        return {}

    def _do_agree_disclosure(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        agreement = str(uuid.uuid4())
        recipient = c.fields["recipient"]
        self._subject(uow, c).agree_disclosure(
            policy=self.policy,
            sealer=sealer,
            agreement=agreement,
            recipient_kind=recipient["kind"],
            recipient_name=recipient["name"],
            country=recipient["country"],
            categories=c.fields["categories"],
            purpose=c.fields["purpose"],
            valid_until=c.get("valid_until"),
            occurred_at=at,
            actor=c.actor,
        )
        return {"agreement": agreement}

    def _do_revoke_disclosure_agreement(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).revoke_disclosure_agreement(
            agreement=c.fields["agreement"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_disclose(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).disclose(
            policy=self.policy,
            agreement=c.fields["agreement"],
            categories=c.fields["categories"],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_transfer(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).transfer(
            policy=self.policy,
            categories=c.fields["categories"],
            country=c.fields["country"],
            recipient=c.fields["recipient"],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_process(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).process(
            policy=self.policy,
            purpose=c.fields["purpose"],
            activity=c.fields["activity"],
            channel=c.get("channel"),
            categories=c.get("categories") or [],
            occurred_at=at,
            actor=c.actor,
            legal_basis=c.get("legal_basis"),
        )
        return {}

    def _do_start_relationship(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).start_relationship(
            policy=self.policy,
            relationship=c.fields["relationship"],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_end_relationship(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).end_relationship(
            relationship=c.fields["relationship"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_record_dialogue(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).record_dialogue(occurred_at=at, actor=c.actor)
        return {}

    def _do_enter_competition(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).enter_competition(
            policy=self.policy,
            competition=c.fields["competition"],
            ends_on=c.fields["competition_ends_on"],
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_notify_subject(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).notify(
            policy=self.policy,
            notice=c.fields["notice"],
            policy_version=c.fields["policy_version"],
            purpose=c.get("purpose"),
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_place_legal_hold(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        hold = str(uuid.uuid4())
        self._subject(uow, c).place_legal_hold(
            hold=hold, reason=c.fields["reason"], occurred_at=at, actor=c.actor
        )
        return {"hold": hold}

    def _do_release_legal_hold(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).release_legal_hold(
            hold=c.fields["hold"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_open_request(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        request = str(uuid.uuid4())
        due = self._subject(uow, c).open_request(
            request=request,
            right=c.fields["right"],
            received_at=c.get("received_at") or at,
            occurred_at=at,
            actor=c.actor,
        )
        return {"request": request, "due": due}

    def _do_verify_identity(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).verify_identity(
            request=c.fields["request"], occurred_at=at, actor=c.actor
        )
        return {}

    def _do_extend_request(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        due = self._subject(uow, c).extend_request(
            request=c.fields["request"], reason=c.fields["reason"], occurred_at=at, actor=c.actor
        )
        return {"due": due}

    def _do_complete_request(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        self._subject(uow, c).complete_request(
            request=c.fields["request"],
            outcome=c.fields["outcome"],
            note=c.get("note"),
            occurred_at=at,
            actor=c.actor,
        )
        return {}

    def _do_erase(
        self, uow: UnitOfWork, sealer: ScopeSealer, c: Command, at: datetime
    ) -> dict[str, Any]:
        subject = self._subject(uow, c)
        outcome = subject.erase(
            policy=self.policy, request=c.get("request"), occurred_at=at, actor=c.actor
        )
        return {"shredded": outcome.shredded, "retained": outcome.retained}
