"""The policy catalogue (ledger/policies/cekura.toml): complete per DESIGN 5.1, checked on load."""

from __future__ import annotations

import copy
import tomllib
from collections.abc import Callable
from datetime import date
from pathlib import Path
from typing import Any

import pytest

from ledger.config import Settings
from ledger.domain.policy import PolicyCatalogue, PolicyError
from ledger.facade import Ledger
from ledger.policies import DEFAULT_POLICY, load_policy

CATEGORIES = [
    "name",
    "address",
    "email",
    "phone",
    "birth_date",
    "cpr",
    "customer_number",
    "payment_info",
    "delivery_point",
    "power_of_attorney",
    "orders",
    "consumption",
    "call_recording",
    "correspondence",
    "digital_behaviour",
    "cvr",
    "company_name",
    "marketing_profile",
    "competition_entry",
    "invoice",
    "payment_record",
]
SENSITIVE = ["health", "family_relations", "social_problems"]
PURPOSES = {
    "customer_administration": {"contract", "legitimate_interest"},
    "bookkeeping": {"legal_obligation"},
    "marketing": {"consent", "legitimate_interest"},
    "analytics": {"legitimate_interest"},
    "digital_services": {"legitimate_interest"},
    "call_documentation": {"legitimate_interest"},
    "competition": {"consent"},
}
EU_TEXT = "AT BE BG HR CY CZ DK EE FI FR DE GR HU IE IT LV LT LU MT NL PL PT RO SK SI ES SE"
EU = set(EU_TEXT.split(" "))


def raw_catalogue() -> dict[str, Any]:
    with DEFAULT_POLICY.open("rb") as handle:
        return tomllib.load(handle)


def test_catalogue_loads_with_identity_and_dates() -> None:
    policy = load_policy()
    assert policy.version == "2018-05-25"
    assert policy.effective == date(2018, 5, 25)
    assert policy.controller.name == "CEKURA A/S"
    assert policy.controller.cvr == "34046352"
    assert "Datatilsynet" in policy.controller.supervisory_authority
    assert load_policy(None) == policy


@pytest.mark.parametrize("name", CATEGORIES + SENSITIVE)
def test_every_contract_category_is_present(name: str) -> None:
    policy = load_policy()
    assert name in policy.categories
    assert policy.categories[name].sensitive is (name in SENSITIVE)


def test_only_the_three_special_categories_are_sensitive() -> None:
    policy = load_policy()
    assert {n for n, c in policy.categories.items() if c.sensitive} == set(SENSITIVE)


@pytest.mark.parametrize(
    ("category", "retention"),
    [
        ("call_recording", "call_recording"),
        ("marketing_profile", "marketing"),
        ("competition_entry", "competition"),
        ("invoice", "bookkeeping"),
        ("payment_record", "bookkeeping"),
        ("name", "customer_data"),
        ("cpr", "customer_data"),
        ("health", "customer_data"),
        ("correspondence", "customer_data"),
        ("consumption", "customer_data"),
    ],
)
def test_retention_class_of_categories(category: str, retention: str) -> None:
    assert load_policy().categories[category].retention == retention


def test_retention_classes() -> None:
    policy = load_policy()
    assert set(policy.retention) == {
        "customer_data",
        "call_recording",
        "marketing",
        "competition",
        "bookkeeping",
    }
    assert policy.retention["customer_data"].months == 2
    assert policy.retention["call_recording"].months == 2
    assert policy.retention["marketing"].years == 1
    assert policy.retention["competition"].years == 1
    assert policy.retention["bookkeeping"].years == 5
    assert policy.retention["bookkeeping"].legal_obligation
    assert not policy.retention["customer_data"].legal_obligation
    # policy §7: what is collected for bookkeeping is kept as bookkeeping
    assert policy.purposes["bookkeeping"].retention == "bookkeeping"
    assert all(p.retention is None for name, p in policy.purposes.items() if name != "bookkeeping")


@pytest.mark.parametrize(("purpose", "bases"), sorted(PURPOSES.items()))
def test_every_contract_purpose_with_its_legal_bases(purpose: str, bases: set[str]) -> None:
    policy = load_policy()
    assert set(policy.purposes[purpose].legal_bases) == bases
    assert not policy.is_new_purpose(policy.purposes[purpose])


def test_marketing_consent_rules() -> None:
    marketing = load_policy().purposes["marketing"]
    assert marketing.direct_marketing
    assert marketing.consent_channels == {"email", "sms", "phone"}


def test_sensitive_categories_only_for_customer_administration() -> None:
    policy = load_policy()
    for name, purpose in policy.purposes.items():
        allowed = set(SENSITIVE) & purpose.categories
        assert allowed == (set(SENSITIVE) if name == "customer_administration" else set())


def test_purposes_allow_the_categories_they_need() -> None:
    policy = load_policy()
    assert {"invoice", "payment_record"} <= policy.purposes["bookkeeping"].categories
    assert "competition_entry" in policy.purposes["competition"].categories
    assert "call_recording" in policy.purposes["call_documentation"].categories
    assert "marketing_profile" in policy.purposes["marketing"].categories
    assert "cpr" in policy.purposes["customer_administration"].categories
    assert "cpr" not in policy.purposes["marketing"].categories


def test_eu_countries_and_mandatory_customer_data() -> None:
    policy = load_policy()
    assert policy.eu_countries == EU
    for outside in ("NO", "IS", "LI", "CH", "GB", "US"):
        assert outside not in policy.eu_countries
    assert set(policy.mandatory_customer_categories) == {"name", "address", "phone"}


# -- malformed catalogues -----------------------------------------------------------


def _set(path: str, value: Any) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        node[last] = value

    return change


def _drop(path: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        *parents, last = path.split(".")
        node = data
        for part in parents:
            node = node[part]
        del node[last]

    return change


def _add_category_to(purpose: str, category: str) -> Callable[[dict[str, Any]], None]:
    def change(data: dict[str, Any]) -> None:
        data["purposes"][purpose]["categories"].append(category)

    return change


MALFORMED = [
    (
        "unknown retention class of a category",
        _set("categories.name.retention", "forever"),
        "categories.name.retention",
    ),
    (
        "unknown retention class",
        _set("retention.eternal", {"anchor": "relationship_end", "months": 1}),
        "retention.eternal",
    ),
    ("missing retention class", _drop("retention.bookkeeping"), "retention"),
    (
        "unknown anchor",
        _set("retention.marketing.anchor", "whenever"),
        "retention.marketing.anchor",
    ),
    ("no period", _set("retention.marketing.years", 0), "retention.marketing"),
    (
        "unknown legal basis",
        _set("purposes.marketing.legal_bases", ["consent", "vital_interest"]),
        "purposes.marketing.legal_bases",
    ),
    (
        "no legal basis",
        _set("purposes.analytics.legal_bases", []),
        "purposes.analytics.legal_bases",
    ),
    (
        "unknown category in a purpose",
        _add_category_to("analytics", "shoe_size"),
        "purposes.analytics.categories",
    ),
    (
        "unknown channel",
        _set("purposes.marketing.consent_channels", ["email", "fax"]),
        "purposes.marketing.consent_channels",
    ),
    (
        "bad introduced_in",
        _set("purposes.analytics.introduced_in", "soon"),
        "purposes.analytics.introduced_in",
    ),
    (
        "missing categories of a purpose",
        _drop("purposes.competition.categories"),
        "purposes.competition",
    ),
    (
        "unknown retention class of a purpose",
        _set("purposes.bookkeeping.retention", "forever"),
        "purposes.bookkeeping.retention",
    ),
    (
        "a purpose kept in the competition class (it needs its category's id)",
        _set("purposes.analytics.retention", "competition"),
        "purposes.analytics.retention",
    ),
    ("bad country", _set("transfers.eu_countries", ["DK", "Norway"]), "transfers.eu_countries"),
    (
        "unknown mandatory category",
        _set("customers.mandatory_categories", ["name", "shoe_size"]),
        "customers.mandatory_categories",
    ),
    ("missing catalogue section", _drop("catalogue"), "catalogue"),
    ("missing controller section", _drop("controller"), "controller"),
    ("missing controller field", _drop("controller.cvr"), "controller"),
    ("missing retention section", _drop("retention"), "retention"),
    ("missing categories section", _drop("categories"), "categories"),
    ("missing purposes section", _drop("purposes"), "purposes"),
    ("missing transfers section", _drop("transfers"), "transfers"),
    ("missing customers section", _drop("customers"), "customers"),
    ("missing effective date", _drop("catalogue.effective"), "catalogue"),
    ("bad effective date", _set("catalogue.effective", "25 May 2018"), "catalogue.effective"),
    ("wrong type of a section", _set("purposes", ["marketing"]), "purposes"),
]


@pytest.mark.parametrize(
    ("change", "place"), [(c, p) for _, c, p in MALFORMED], ids=[n for n, _, _ in MALFORMED]
)
def test_malformed_catalogue_names_the_place(
    change: Callable[[dict[str, Any]], None], place: str
) -> None:
    data = copy.deepcopy(raw_catalogue())
    change(data)
    with pytest.raises(PolicyError) as caught:
        PolicyCatalogue.from_mapping(data)
    assert str(caught.value).startswith(place)


def test_malformed_file_names_the_file_and_place(tmp_path: Path) -> None:
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    broken = tmp_path / "broken.toml"
    broken.write_text(
        text.replace(
            '[categories.cvr]\nlabel = "CVR-nummer"\nretention = "customer_data"',
            '[categories.cvr]\nlabel = "CVR-nummer"\nretention = "archive"',
        ),
        encoding="utf-8",
    )
    with pytest.raises(PolicyError) as caught:
        load_policy(broken)
    assert str(broken) in str(caught.value)
    assert "categories.cvr.retention" in str(caught.value)
    assert "archive" in str(caught.value)


def test_bad_toml_is_a_policy_error(tmp_path: Path) -> None:
    broken = tmp_path / "bad.toml"
    broken.write_text(DEFAULT_POLICY.read_text(encoding="utf-8") + "\n[purposes.x\n", "utf-8")
    with pytest.raises(PolicyError) as caught:
        load_policy(broken)
    assert str(broken) in str(caught.value)
    assert "TOML" in str(caught.value)


def test_missing_file_is_a_policy_error(tmp_path: Path) -> None:
    with pytest.raises(PolicyError) as caught:
        load_policy(tmp_path / "nowhere.toml")
    assert "nowhere.toml" in str(caught.value)


ALTERNATIVE = """
[categories.shoe_size]
label = "Skostørrelse"
retention = "customer_data"

[purposes.fitting]
label = "Pasning af sko"
legal_bases = ["contract"]
categories = ["shoe_size", "name"]
introduced_in = "2018-05-25"
"""


def test_ledger_policy_picks_another_catalogue(tmp_path: Path, ledger_env: dict[str, str]) -> None:
    path = tmp_path / "shoes.toml"
    text = DEFAULT_POLICY.read_text(encoding="utf-8")
    text = text.replace('name = "CEKURA A/S privatlivspolitik"', 'name = "Skobutik"', 1)
    path.write_text(text + ALTERNATIVE, encoding="utf-8")
    settings = Settings.from_env({**ledger_env, "LEDGER_POLICY": str(path)})
    assert settings.policy_path == path
    collect = {
        "type": "collect",
        "category": "shoe_size",
        "value": "42",
        "purpose": "fitting",
        "legal_basis": "contract",
        "source": "subject",
    }
    register = {
        "type": "register_subject",
        "kind": "customer",
        "purpose": "fitting",
        "legal_basis": "contract",
    }
    with Ledger.open(settings) as ledger:
        assert ledger.policy.name == "Skobutik"
        assert "shoe_size" in ledger.policy.categories
        subject = ledger.execute(register)["subject"]
        assert ledger.execute({**collect, "subject": subject}) == {"ok": True}
    # the default catalogue knows neither the purpose nor the category
    with Ledger.open(Settings.from_env(ledger_env)) as ledger:
        assert ledger.policy.name == "CEKURA A/S privatlivspolitik"
        result = ledger.execute(register)
        assert result["error"]["code"] == "unknown_purpose"
        other = ledger.execute({**register, "purpose": "customer_administration"})["subject"]
        result = ledger.execute({**collect, "subject": other, "purpose": "customer_administration"})
        assert result["error"]["code"] == "unknown_category"


def test_ledger_policy_that_is_malformed_stops_opening(
    tmp_path: Path, ledger_env: dict[str, str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text("[catalogue]\nname = 'x'\n", encoding="utf-8")
    with pytest.raises(PolicyError):
        Ledger.open(Settings.from_env({**ledger_env, "LEDGER_POLICY": str(path)}))
