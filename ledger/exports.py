"""The subject's own copy: the Art. 15 access answer and the Art. 20 portable export.

Both hold plaintext, so the facade records a `DataViewed` event before building them; they
are returned to the caller and never written to disk by the ledger.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime
from typing import Any

from ledger.domain.policy import PolicyCatalogue
from ledger.domain.subject import DataSubject

PORTABLE_FORMAT = "cekura-ledger-portable/1"
PORTABLE_SOURCES = ("subject", "observed")
PORTABLE_BASES = ("consent", "contract")

RIGHTS = [
    ("access", "Art. 15", "a copy of your data and how it is processed (this document)"),
    ("rectification", "Art. 16", "to have inaccurate data corrected"),
    ("erasure", "Art. 17", "to have your data erased, unless the law requires us to keep it"),
    ("restriction", "Art. 18", "to have processing restricted while a question is settled"),
    (
        "objection",
        "Art. 21",
        "to object to processing on legitimate interest; unconditionally to direct marketing",
    ),
    ("portability", "Art. 20", "to receive the data you gave us in a machine-readable format"),
    (
        "withdraw_consent",
        "Art. 7(3)",
        "to withdraw a consent at any time, without affecting processing before the withdrawal",
    ),
]


Opener = Callable[[Mapping[str, Any], str], Any]  # (sealed value, category) -> value or None


def earlier_values(
    subject: DataSubject, events: Iterable[object], open_value: Opener
) -> list[dict[str, Any]]:
    """Values collected or rectified before the current one of their category that are
    still held: their key is not shredded, so they exist in the log and can be read
    (stored data is processed data, Art. 15(1)). Oldest first; what a shredded key
    sealed is gone and left out."""
    current = {c: item["value"].get("ct") for c, item in subject.latest.items()}
    found: list[dict[str, Any]] = []
    for event in events:
        if not isinstance(event, DataSubject.DataCollected | DataSubject.DataRectified):
            continue
        state = vars(event)
        sealed, category = state["value"], state["category"]
        if sealed.get("ct") == current.get(category):
            continue
        value = open_value(sealed, category)
        if value is None:
            continue
        collected = isinstance(event, DataSubject.DataCollected)
        found.append(
            {
                "category": category,
                "value": value,
                "scope": state["scope"],
                "purpose": state["purpose"] if collected else None,
                "legal_basis": state["legal_basis"] if collected else None,
                "source": state["source"] if collected else None,
                "recorded_as": "collected" if collected else "rectification",
                "at": state["occurred_at"],
            }
        )
    return found


def _legal_bases(
    purpose: str,
    subject: DataSubject,
    data: list[dict[str, Any]],
    earlier: list[dict[str, Any]],
    consented: set[str],
) -> list[str]:
    """The bases recorded for a purpose; a purpose the subject only consented to (no data
    collected for it yet, e.g. a newsletter) rests on that consent."""
    bases = {i["legal_basis"] for i in [*data, *earlier] if i["purpose"] == purpose}
    if purpose == subject.purpose:
        bases.add(subject.legal_basis)
    if not bases and purpose in consented:
        bases.add("consent")
    return sorted(bases)


def access_report(
    subject: DataSubject,
    view: Mapping[str, Any],
    policy: PolicyCatalogue,
    views: list[dict[str, Any]],
    *,
    generated_at: datetime,
    earlier: list[dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Every item of Art. 15(1)(a)–(h), a copy of the data, and who viewed it.

    `data` is the current value of each category; `earlier_values` the older values still
    held, e.g. a previous address, or a name kept for bookkeeping after an erasure."""
    data = view["data"]
    earlier = earlier or []
    purposes = sorted(
        {item["purpose"] for item in data}
        | {item["purpose"] for item in earlier if item["purpose"]}
        | {c["purpose"] for c in view["consents"]}
        | {subject.purpose}
    )
    categories = sorted({item["category"] for item in [*data, *earlier]})
    consented = {c["purpose"] for c in view["consents"]}
    scopes = {r["scope"]: r for r in view["retention"]}
    return {
        "document": "Indsigt efter databeskyttelsesforordningens artikel 15 (access report)",
        "generated_at": generated_at.isoformat(),
        "controller": {
            "name": policy.controller.name,
            "cvr": policy.controller.cvr,
            "address": policy.controller.address,
            "email": policy.controller.email,
            "phone": policy.controller.phone,
        },
        "subject": view["subject"],
        "kind": view["kind"],
        "status": view["status"],
        "purposes": [  # Art. 15(1)(a)
            {
                "purpose": name,
                "description": policy.purposes[name].label if name in policy.purposes else name,
                "legal_bases": _legal_bases(name, subject, data, earlier, consented),
            }
            for name in purposes
        ],
        "categories": [  # Art. 15(1)(b)
            {
                "category": name,
                "description": policy.categories[name].label if name in policy.categories else name,
                "sensitive": bool(name in policy.categories and policy.categories[name].sensitive),
            }
            for name in categories
        ],
        "recipients": {  # Art. 15(1)(c)
            "agreements": view["agreements"],
            "disclosures": view["disclosures"],
            "transfers": view["transfers"],
            "outside_eu": False,
        },
        "retention": [  # Art. 15(1)(d)
            {
                "scope": scope,
                "rule": policy.retention[scope.split(":")[0]].description
                if scope.split(":")[0] in policy.retention
                else "",
                "deadline": entry["deadline"],
                "held": entry["held"],
                "shredded_at": entry["shredded_at"],
            }
            for scope, entry in scopes.items()
        ],
        "rights": [  # Art. 15(1)(e)
            {"right": name, "article": article, "meaning": meaning}
            for name, article, meaning in RIGHTS
        ],
        "complaint": {  # Art. 15(1)(f)
            "authority": policy.controller.supervisory_authority,
            "controller_contact": policy.controller.complaints,
        },
        "sources": [  # Art. 15(1)(g)
            {"category": item["category"], "source": item["source"]} for item in data
        ],
        "automated_decisions": {  # Art. 15(1)(h)
            "used": False,
            "explanation": "No decision about you is made by automated means alone, "
            "and no profiling with legal or similarly significant effects takes place.",
        },
        "data": data,
        "earlier_values": earlier,
        "consents": view["consents"],
        "objections": view["objections"],
        "restricted": view["restricted"],
        "requests": view["requests"],
        "views": views,  # CJEU C-579/21: who consulted the data, when and why
    }


def portable_export(
    view: Mapping[str, Any], policy: PolicyCatalogue, *, generated_at: datetime
) -> dict[str, Any]:
    """Art. 20: what the subject provided or we observed, processed on consent or contract."""
    items = [
        {
            "category": item["category"],
            "value": item["value"],
            "collected_at": item["collected_at"],
            "source": item["source"],
            "legal_basis": item["legal_basis"],
            "purpose": item["purpose"],
        }
        for item in view["data"]
        if item["source"] in PORTABLE_SOURCES
        and item["legal_basis"] in PORTABLE_BASES
        and not item["erased"]
    ]
    return {
        "format": PORTABLE_FORMAT,
        "generated_at": generated_at.isoformat(),
        "controller": policy.controller.name,
        "subject": view["subject"],
        "data": items,
    }


# Headings for the parts of an export; other keys are turned into words as they are.
HEADINGS = {
    "purposes": "Why we process your data (purposes and legal bases)",
    "categories": "The kinds of data we hold about you",
    "recipients": "Who has received your data",
    "retention": "How long we keep it",
    "rights": "Your rights",
    "complaint": "Where to complain",
    "sources": "Where the data came from",
    "automated_decisions": "Automated decisions",
    "data": "Your data as we hold it now",
    "earlier_values": "Earlier values we still hold",
    "consents": "Your consents",
    "objections": "Your objections",
    "restricted": "Processing restricted",
    "requests": "Your requests",
    "views": "Who has looked at your data",
}


def render_html(document: Mapping[str, Any]) -> str:
    """A self-contained page a person can read: headings in words, tables, no scripts;
    lists joined, yes and no, nested records as lines."""
    title = str(document.get("document") or "Data export")
    parts = [
        "<!doctype html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{html.escape(title)}</title>",
        "<style>body{font-family:sans-serif;max-width:60em;margin:2em auto}"
        "table{border-collapse:collapse;width:100%}td,th{border:1px solid #bbb;"
        "padding:.3em;text-align:left;vertical-align:top}</style></head><body>",
        f"<h1>{html.escape(title)}</h1>",
    ]
    controller = document.get("controller")
    if isinstance(controller, Mapping):
        parts.append(
            f"<p>From {html.escape(str(controller.get('name', '')))}, "
            f"CVR {html.escape(str(controller.get('cvr', '')))}, "
            f"{html.escape(str(controller.get('address', '')))}. "
            f"Made {html.escape(str(document.get('generated_at', '')))}.</p>"
        )
    for key, value in document.items():
        if key in ("document", "controller", "generated_at"):
            continue
        parts.append(f"<h2>{html.escape(HEADINGS.get(key, _words(key)))}</h2>")
        parts.append(_html_value(value))
    parts.append("</body></html>")
    return "\n".join(parts)


def _words(key: str) -> str:
    return key.replace("_", " ").capitalize()


def _html_value(value: Any) -> str:
    if isinstance(value, list):
        if not value:
            return "<p>None.</p>"
        if all(isinstance(v, Mapping) for v in value):
            columns = list(dict.fromkeys(k for v in value for k in v))
            head = "".join(f"<th>{html.escape(_words(c))}</th>" for c in columns)
            rows = "".join(
                "<tr>" + "".join(f"<td>{_cell(v.get(c))}</td>" for c in columns) + "</tr>"
                for v in value
            )
            return f"<table><tr>{head}</tr>{rows}</table>"
        return "<ul>" + "".join(f"<li>{_cell(v)}</li>" for v in value) + "</ul>"
    if isinstance(value, Mapping):
        rows = "".join(
            f"<tr><th>{html.escape(_words(str(k)))}</th><td>{_nested(v)}</td></tr>"
            for k, v in value.items()
        )
        return f"<table>{rows}</table>"
    return f"<p>{_cell(value)}</p>"


def _nested(value: Any) -> str:
    return _html_value(value) if isinstance(value, (list, Mapping)) else _cell(value)


def _cell(value: Any) -> str:
    """One value as text: yes/no, lists joined by commas, records as 'name: value' lines."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, list):
        if all(not isinstance(v, (dict, list)) for v in value):
            return html.escape(", ".join(str(v) for v in value))
        return "<br>".join(_cell(v) for v in value)
    if isinstance(value, dict):
        return "<br>".join(
            f"{html.escape(_words(str(k)))}: {_cell(v)}" for k, v in value.items() if v is not None
        )
    return html.escape(str(value))
