"""The one error type of the ledger: a contract code and a message free of personal data."""

from __future__ import annotations

from typing import Any, Final
from uuid import UUID

ERROR_CODES: Final[frozenset[str]] = frozenset(
    {
        "invalid_command",
        "unknown_subject",
        "subject_erased",
        "unknown_category",
        "unknown_purpose",
        "purpose_not_allowed",
        "legal_basis_not_allowed",
        "consent_required",
        "explicit_consent_required",
        "sensitive_requires_subject_source",
        "cpr_ground_required",
        "invalid_cpr",
        "restricted",
        "objected",
        "no_disclosure_agreement",
        "transfer_outside_eu",
        "purpose_not_notified",
        "missing_mandatory_data",
        "unknown_request",
        "request_closed",
        "extension_too_late",
        "unknown_agreement",
        "unknown_hold",
        "duplicate",
        "conflict",
        "unauthorized",
        "forbidden",
    }
)


class LedgerError(Exception):
    """A rejection with a code from DESIGN 5.2.

    The message is shown to callers and written to logs, so it must never hold a
    personal value: name categories, purposes and ids, never the values themselves.
    """

    def __init__(self, code: str, message: str) -> None:
        if code not in ERROR_CODES:
            raise ValueError(f"not a contract error code: {code}")
        super().__init__(message)
        self.code = code
        self.message = message

    def to_result(self) -> dict[str, Any]:
        return {"ok": False, "error": {"code": self.code, "message": self.message}}

    def __repr__(self) -> str:
        return f"LedgerError({self.code!r}, {self.message!r})"


def unknown_subject(subject_id: object) -> LedgerError:
    """`unknown_subject`, naming the id if it is a UUID (ids are pseudonyms); anything else
    given for an id is not repeated: it may be anything, a personal value too."""
    try:
        canonical = UUID(str(subject_id))
    except ValueError:
        return LedgerError("unknown_subject", "no subject with that id (subject ids are UUIDs)")
    return LedgerError("unknown_subject", f"no subject {canonical}")


def canonical_subject_id(subject_id: object) -> str:
    """A subject id in the one form the ledger stores (lower case, dashed), whatever form
    of the UUID was given; anything that is no UUID is `unknown_subject`."""
    try:
        return str(UUID(str(subject_id)))
    except ValueError:
        raise unknown_subject(subject_id) from None
