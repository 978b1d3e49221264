"""Compliance reports over the read models (`ledger report NAME`), in JSON, Markdown or HTML.

A report is a function registered under a name. It reads the read models inside one
consistent read and returns a `Report`: `data` for programs (the JSON format) and
`sections` for people (Markdown and HTML, titled, dated, with the controller's name).

Other modules add reports the same way (`@register_report("compliance", ...)`): modules in
this package are found automatically, and so are the modules named in `PROVIDERS`, when
they exist (the audit engineer's compliance assertions live in `ledger.audit`).
"""

from __future__ import annotations

import importlib
import importlib.util
import pkgutil
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ledger.errors import LedgerError
from ledger.projections import ReadModels
from ledger.reports.model import Report, ReportContext, Section, Table
from ledger.reports.render import render

__all__ = [
    "PROVIDERS",
    "Report",
    "ReportContext",
    "ReportSpec",
    "Section",
    "Table",
    "available",
    "build",
    "produce",
    "register_report",
    "render",
    "unregister_report",
]

Builder = Callable[[ReportContext], Report]

#: Modules outside this package that may register reports (imported if they exist).
PROVIDERS: tuple[str, ...] = ("ledger.audit.compliance",)

FORMATS = ("json", "md", "html")


@dataclass(frozen=True)
class ReportSpec:
    name: str
    title: str
    description: str
    build: Builder


_REGISTRY: dict[str, ReportSpec] = {}
_loaded = False


def register_report(name: str, *, title: str, description: str) -> Callable[[Builder], Builder]:
    """Register a report builder under `name` (a later registration replaces an earlier one)."""

    def decorate(builder: Builder) -> Builder:
        _REGISTRY[name] = ReportSpec(name, title, description, builder)
        return builder

    return decorate


def unregister_report(name: str) -> None:
    """Forget a registered report (tests, or a plug-in replacing a report by removal)."""
    _REGISTRY.pop(name, None)


def _load() -> None:
    global _loaded
    if _loaded:
        return
    _loaded = True
    for module in pkgutil.iter_modules(__path__):
        if module.name not in ("model", "render", "text"):
            importlib.import_module(f"{__name__}.{module.name}")
    for name in PROVIDERS:
        try:
            found = importlib.util.find_spec(name)
        except ModuleNotFoundError:
            found = None
        if found is not None:
            importlib.import_module(name)


def available() -> dict[str, ReportSpec]:
    """Every registered report, by name."""
    _load()
    return dict(sorted(_REGISTRY.items()))


def _spec(name: str) -> ReportSpec:
    spec = available().get(name)
    if spec is None:
        known = ", ".join(available())
        raise LedgerError("invalid_command", f"no report '{name}' (available: {known})")
    return spec


def build(name: str, context: ReportContext) -> Report:
    return _spec(name).build(context)


def produce(
    read_models: ReadModels,
    name: str,
    *,
    now: datetime,
    fmt: str = "json",
    as_of: datetime | None = None,
    basis: str | None = None,
    current: bool = True,
) -> Any:
    """Build a report from the read models (caught up first) and render it.

    `fmt="json"` returns the JSON object, `md` and `html` return text.
    """
    if fmt not in FORMATS:
        raise LedgerError("invalid_command", f"format must be one of: {', '.join(FORMATS)}")
    spec = _spec(name)
    with read_models.reading(current=current) as cursor:
        context = ReportContext(
            cursor=cursor,
            policy=read_models.policy,
            now=now,
            position=read_models.recorder.position_in(cursor),
            as_of=as_of,
            basis=basis,
            events_table=None if as_of is not None else read_models.events.table,
        )
        report = spec.build(context)
    return render(report, context, fmt)
