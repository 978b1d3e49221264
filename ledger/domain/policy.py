"""The policy catalogue: the privacy policy as data, validated when it is built.

Pure: it is built from a mapping (the loader in `ledger.policies` reads the TOML file).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date
from typing import Any, Final

LEGAL_BASES: Final = ("consent", "contract", "legal_obligation", "legitimate_interest")
RETENTION_CLASSES: Final = (
    "customer_data",
    "call_recording",
    "marketing",
    "competition",
    "bookkeeping",
)
ANCHORS: Final = (
    "relationship_end_or_last_dialogue",
    "relationship_end",
    "newest_registration",
    "competition_end",
    "financial_year_end",
)
CHANNELS: Final = ("email", "sms", "phone", "post", "online_ads")


class PolicyError(ValueError):
    """The catalogue is malformed; the message names the place."""


@dataclass(frozen=True)
class RetentionClass:
    name: str
    label: str
    description: str
    anchor: str
    months: int = 0
    years: int = 0
    legal_obligation: bool = False


@dataclass(frozen=True)
class Category:
    name: str
    label: str
    retention: str
    sensitive: bool = False
    identifier: bool = False


@dataclass(frozen=True)
class Purpose:
    name: str
    label: str
    legal_bases: tuple[str, ...]
    categories: frozenset[str]
    introduced_in: date
    consent_channels: frozenset[str] = frozenset()
    direct_marketing: bool = False
    retention: str | None = None  # kept in this class, whatever the category's (bookkeeping)


@dataclass(frozen=True)
class Controller:
    name: str
    cvr: str
    address: str
    phone: str
    email: str
    complaints: str
    supervisory_authority: str


@dataclass(frozen=True)
class PolicyCatalogue:
    name: str
    version: str
    effective: date
    controller: Controller
    retention: Mapping[str, RetentionClass]
    categories: Mapping[str, Category]
    purposes: Mapping[str, Purpose]
    eu_countries: frozenset[str]
    mandatory_customer_categories: tuple[str, ...]
    security_measures: tuple[str, ...]

    def retention_of(self, category: str) -> RetentionClass:
        return self.retention[self.categories[category].retention]

    def is_new_purpose(self, purpose: Purpose) -> bool:
        """A purpose added after the catalogue first took effect needs notice first (R12)."""
        return purpose.introduced_in > self.effective

    def as_dict(self) -> dict[str, Any]:
        """A plain description (reports, exports)."""
        return {
            "name": self.name,
            "version": self.version,
            "effective": self.effective.isoformat(),
            "controller": vars(self.controller),
        }

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any]) -> PolicyCatalogue:
        return _build(data)


def _need(data: Mapping[str, Any], key: str, where: str, kind: type | tuple[type, ...]) -> Any:
    if key not in data:
        raise PolicyError(f"{where}: missing '{key}'")
    value = data[key]
    if not isinstance(value, kind):
        raise PolicyError(f"{where}.{key}: wrong type {type(value).__name__}")
    return value


def _date(value: Any, where: str) -> date:
    if isinstance(value, date):
        return value
    try:
        return date.fromisoformat(str(value))
    except ValueError:
        raise PolicyError(f"{where}: not an ISO date: {value!r}") from None


def _build(data: Mapping[str, Any]) -> PolicyCatalogue:
    meta = _need(data, "catalogue", "catalogue", dict)
    ctrl = _need(data, "controller", "controller", dict)
    controller = Controller(
        **{
            key: str(_need(ctrl, key, "controller", str))
            for key in (
                "name",
                "cvr",
                "address",
                "phone",
                "email",
                "complaints",
                "supervisory_authority",
            )
        }
    )

    retention: dict[str, RetentionClass] = {}
    for name, spec in _need(data, "retention", "retention", dict).items():
        where = f"retention.{name}"
        if name not in RETENTION_CLASSES:
            raise PolicyError(f"{where}: unknown retention class (known: {RETENTION_CLASSES})")
        anchor = _need(spec, "anchor", where, str)
        if anchor not in ANCHORS:
            raise PolicyError(f"{where}.anchor: unknown anchor {anchor!r}")
        months = int(spec.get("months", 0))
        years = int(spec.get("years", 0))
        if months <= 0 and years <= 0:
            raise PolicyError(f"{where}: needs a positive 'months' or 'years'")
        retention[name] = RetentionClass(
            name=name,
            label=str(spec.get("label", name)),
            description=str(spec.get("description", "")),
            anchor=anchor,
            months=months,
            years=years,
            legal_obligation=bool(spec.get("legal_obligation", False)),
        )
    for required in RETENTION_CLASSES:
        if required not in retention:
            raise PolicyError(f"retention: class '{required}' is missing")

    categories: dict[str, Category] = {}
    for name, spec in _need(data, "categories", "categories", dict).items():
        where = f"categories.{name}"
        klass = _need(spec, "retention", where, str)
        if klass not in retention:
            raise PolicyError(f"{where}.retention: unknown retention class {klass!r}")
        categories[name] = Category(
            name=name,
            label=str(spec.get("label", name)),
            retention=klass,
            sensitive=bool(spec.get("sensitive", False)),
            identifier=bool(spec.get("identifier", False)),
        )

    effective = _date(_need(meta, "effective", "catalogue", (str, date)), "catalogue.effective")
    purposes: dict[str, Purpose] = {}
    for name, spec in _need(data, "purposes", "purposes", dict).items():
        where = f"purposes.{name}"
        bases = tuple(_need(spec, "legal_bases", where, list))
        for basis in bases:
            if basis not in LEGAL_BASES:
                raise PolicyError(f"{where}.legal_bases: unknown legal basis {basis!r}")
        if not bases:
            raise PolicyError(f"{where}.legal_bases: at least one legal basis is needed")
        allowed = frozenset(_need(spec, "categories", where, list))
        for category in allowed:
            if category not in categories:
                raise PolicyError(f"{where}.categories: unknown category {category!r}")
        channels = frozenset(spec.get("consent_channels", []))
        for channel in channels:
            if channel not in CHANNELS:
                raise PolicyError(f"{where}.consent_channels: unknown channel {channel!r}")
        kept_as = spec.get("retention")
        if kept_as is not None:
            if kept_as not in retention:
                raise PolicyError(f"{where}.retention: unknown retention class {kept_as!r}")
            if retention[kept_as].anchor == "competition_end":
                raise PolicyError(f"{where}.retention: a competition's class needs its category")
        purposes[name] = Purpose(
            name=name,
            label=str(spec.get("label", name)),
            legal_bases=bases,
            categories=allowed,
            introduced_in=_date(spec.get("introduced_in", effective), f"{where}.introduced_in"),
            consent_channels=channels,
            direct_marketing=bool(spec.get("direct_marketing", False)),
            retention=kept_as,
        )

    transfers = _need(data, "transfers", "transfers", dict)
    eu = frozenset(_need(transfers, "eu_countries", "transfers", list))
    for country in eu:
        if not (isinstance(country, str) and len(country) == 2 and country.isupper()):
            raise PolicyError(f"transfers.eu_countries: not an ISO 3166 alpha-2 code: {country!r}")
    customers = _need(data, "customers", "customers", dict)
    mandatory = tuple(_need(customers, "mandatory_categories", "customers", list))
    for category in mandatory:
        if category not in categories:
            raise PolicyError(f"customers.mandatory_categories: unknown category {category!r}")
    security = data.get("security", {})

    return PolicyCatalogue(
        name=str(_need(meta, "name", "catalogue", str)),
        version=str(_need(meta, "version", "catalogue", (str, date))),
        effective=effective,
        controller=controller,
        retention=retention,
        categories=categories,
        purposes=purposes,
        eu_countries=eu,
        mandatory_customer_categories=mandatory,
        security_measures=tuple(str(m) for m in security.get("measures", [])),
    )
