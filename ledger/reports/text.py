"""Words for people: labels of codes, dates written out, the legal basis named by article."""

from __future__ import annotations

from datetime import date, datetime
from typing import Any

from ledger.clock import COPENHAGEN
from ledger.domain.policy import PolicyCatalogue

MONTHS = (
    "January",
    "February",
    "March",
    "April",
    "May",
    "June",
    "July",
    "August",
    "September",
    "October",
    "November",
    "December",
)

LEGAL_BASES = {
    "consent": "consent (GDPR Art. 6(1)(a))",
    "contract": "performance of a contract (Art. 6(1)(b))",
    "legal_obligation": "legal obligation (Art. 6(1)(c))",
    "legitimate_interest": "legitimate interests (Art. 6(1)(f))",
}

SUBJECT_KINDS = {
    "customer": "Customers",
    "prospect": "Prospective customers",
    "contact_person": "Contact persons given by customers",
    "competition_entrant": "Competition entrants",
    "company_contact": "Contact persons at business customers",
}

RECIPIENT_KINDS = {
    "family_member": "Family members",
    "general_practitioner": "General practitioners",
    "public_authority": "Public authorities",
    "other": "Other recipients agreed with the subject",
}

CHANNELS = {
    "email": "e-mail",
    "sms": "SMS",
    "phone": "telephone",
    "post": "post",
    "online_ads": "online advertising",
}

RIGHTS = {
    "access": "access (Art. 15)",
    "rectification": "rectification (Art. 16)",
    "erasure": "erasure (Art. 17)",
    "restriction": "restriction (Art. 18)",
    "objection": "objection (Art. 21)",
    "portability": "data portability (Art. 20)",
}


def long_date(day: date) -> str:
    return f"{day.day} {MONTHS[day.month - 1]} {day.year}"


def long_instant(moment: datetime) -> str:
    local = moment.astimezone(COPENHAGEN)
    return f"{long_date(local.date())} at {local:%H:%M} (Copenhagen time)"


def day_of(text: str | None) -> str:
    """The Copenhagen date of an RFC 3339 time, as YYYY-MM-DD ('' for none)."""
    if not text:
        return ""
    return datetime.fromisoformat(text).astimezone(COPENHAGEN).date().isoformat()


def purpose_label(policy: PolicyCatalogue, purpose: str) -> str:
    found = policy.purposes.get(purpose)
    return f"{found.label} ({purpose})" if found and found.label != purpose else purpose


def category_label(policy: PolicyCatalogue, category: str) -> str:
    found = policy.categories.get(category)
    return f"{found.label} ({category})" if found and found.label != category else category


def retention_label(policy: PolicyCatalogue, klass: str) -> str:
    found = policy.retention.get(klass)
    return found.label if found else klass


def period(months: int, years: int) -> str:
    parts = []
    if years:
        parts.append(f"{years} year{'s' if years != 1 else ''}")
    if months:
        parts.append(f"{months} month{'s' if months != 1 else ''}")
    return " and ".join(parts) or "no time"


def yes_no(value: Any) -> str:
    return "yes" if value else "no"


def plural(count: int, word: str, words: str | None = None) -> str:
    return f"{count:,} {word if count == 1 else (words or word + 's')}"
