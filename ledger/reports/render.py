"""Rendering a report: JSON for programs; Markdown and HTML for people.

The human formats open with the title, the controller and the moment the report speaks
of, say in a sentence what the report is, and end with where the figures come from.
"""

from __future__ import annotations

import html
import re
from datetime import UTC, datetime, timedelta
from typing import Any

from ledger.reports.model import Report, ReportContext, Section, Table
from ledger.reports.text import long_instant


def render(report: Report, context: ReportContext, fmt: str) -> Any:
    if fmt == "json":
        return as_json(report, context)
    if fmt == "md":
        return as_markdown(report, context)
    if fmt == "html":
        return as_html(report, context)
    raise ValueError(f"unknown format {fmt}")


def _header(context: ReportContext) -> dict[str, Any]:
    controller = context.policy.controller
    header: dict[str, Any] = {
        "controller": {
            "name": controller.name,
            "cvr": controller.cvr,
            "address": controller.address,
        },
        "policy": {"name": context.policy.name, "version": context.policy.version},
        "now": context.now.isoformat(),
        "generated_at": datetime.now(UTC).isoformat(),
        "position": context.position,
    }
    if context.as_of is not None:
        header["as_of"] = context.as_of.isoformat()
        header["as_of_basis"] = context.basis
    return header


def as_json(report: Report, context: ReportContext) -> dict[str, Any]:
    return {"report": report.name, "title": report.title, **_header(context), **report.data}


COUNTED_ELSEWHEN = timedelta(minutes=5)  # a `--now` this far from the real time is said


def _lines(report: Report, context: ReportContext) -> tuple[str, list[str]]:
    """The subtitle lines every human format shows under the title."""
    controller = context.policy.controller
    who = f"{controller.name} (CVR {controller.cvr}), {controller.address}"
    when = f"As of {long_instant(context.now)}"
    if context.as_of is None and abs(datetime.now(UTC) - context.now) > COUNTED_ELSEWHEN:
        # `--now` moves the clock dates and deadlines are counted with, not the records
        when = (
            f"The records as they stand now (every event up to number {context.position:,}); "
            f"dates and deadlines counted as on {long_instant(context.now)}. For the records "
            "as they stood at another moment: ledger audit replay --as-of"
        )
    if context.as_of is not None:
        how = "recorded" if context.basis == "recorded" else "that had happened"
        when = (
            f"Replayed for audit: the records as they stood on {long_instant(context.as_of)} "
            f"(events {how} by then)"
        )
    made = f"Generated {long_instant(datetime.now(UTC))}"
    return who, [when, made]


def _source(context: ReportContext) -> str:
    if context.as_of is not None:
        what = (
            f"Source: a replay of the event log (events 1 to {context.position:,}, keeping "
            "those the moment above allows) into a temporary store; policy catalogue "
        )
    else:
        what = (
            "Source: the ledger's read models, which include every event up to number "
            f"{context.position:,} of the event log; policy catalogue "
        )
    return (
        what + f"{context.policy.name}, version {context.policy.version}. "
        "Subjects are identified by pseudonymous ids; no personal value appears in this report."
    )


# -- Markdown ------------------------------------------------------------------------------


# Report text is plain text, as in HTML (where it is escaped): names, reasons, recipients
# and activities come from the records and the policy, and must not turn into markup,
# links or a broken table. Characters that mean something anywhere in a line are escaped
# with a backslash; `_` only where it could start or end emphasis (not inside a word, so
# `customer_administration` stays readable); `&` only where it would start an entity.
_MD_INLINE = re.compile(r"[\\`*\[\]<>|~]|(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])|&(?=#?[0-9A-Za-z]+;)")
# What opens a block where a line starts: a heading, quote, list item, rule or setext line
# (a list number loses its meaning by the escaped dot or parenthesis after it).
_MD_BLOCK = re.compile(r"^(?:[#>+=-]|[0-9]+(?=[.)](?:\s|$)))")


def _md(value: Any, *, starts_line: bool = True) -> str:
    """`value` as Markdown that shows it as it is: on one line, nothing in it markup."""
    text = " ".join(("" if value is None else str(value)).split())
    text = _MD_INLINE.sub(lambda m: "\\" + m.group(0), text)
    if starts_line:
        text = _MD_BLOCK.sub(_block_escaped, text, count=1)
    return text


def _block_escaped(match: re.Match[str]) -> str:
    marker = match.group(0)
    return marker + "\\" if marker[0].isdigit() else "\\" + marker


def _md_cell(value: Any) -> str:
    return _md(value, starts_line=False)  # inside a table row, nothing starts a block


def _md_table(table: Table) -> list[str]:
    out = []
    if table.caption:
        out += [f"*{_md(table.caption, starts_line=False)}*", ""]
    if not table.rows:
        return [*out, _md(table.empty), ""]
    out.append("| " + " | ".join(_md_cell(c) for c in table.columns) + " |")
    out.append("|" + "|".join(" --- " for _ in table.columns) + "|")
    for row in table.rows:
        out.append("| " + " | ".join(_md_cell(c) for c in row) + " |")
    return [*out, ""]


def _md_section(number: int, section: Section) -> list[str]:
    out = [f"## {number}. {_md(section.heading, starts_line=False)}", ""]
    for paragraph in section.paragraphs:
        out += [_md(paragraph), ""]
    if section.facts:
        out += [
            f"- **{_md(k, starts_line=False)}:** {_md(v, starts_line=False)}"
            for k, v in section.facts
        ] + [""]
    if section.bullets:
        out += [f"- {_md(b)}" for b in section.bullets] + [""]
    for table in section.tables:
        out += _md_table(table)
    return out


def as_markdown(report: Report, context: ReportContext) -> str:
    who, when = _lines(report, context)
    out = [
        f"# {_md(report.title, starts_line=False)}",
        "",
        f"**Controller:** {_md(who, starts_line=False)}  ",
        *(f"{_md(w)}  " for w in when),
        "",
    ]
    out += [_md(report.summary), ""]
    for number, section in enumerate(report.sections, start=1):
        out += _md_section(number, section)
    out += ["---", "", _md(_source(context)), ""]
    return "\n".join(out)


# -- HTML ----------------------------------------------------------------------------------

_STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2rem auto;
       max-width: 70rem; padding: 0 1rem; color: #1b1b1b; line-height: 1.45; }
h1 { font-size: 1.7rem; margin-bottom: .2rem; }
h2 { font-size: 1.25rem; margin-top: 2rem; border-bottom: 1px solid #ccc; }
.meta { color: #444; margin: .1rem 0; }
.summary { font-size: 1.05rem; margin: 1rem 0 1.5rem; }
table { border-collapse: collapse; margin: .5rem 0 1rem; font-size: .92rem; }
th, td { border: 1px solid #bbb; padding: .25rem .5rem; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
td.num { text-align: right; }
caption { text-align: left; font-style: italic; padding-bottom: .3rem; }
dl { display: grid; grid-template-columns: max-content auto; gap: .2rem 1rem; }
dt { font-weight: 600; }
footer { margin-top: 2.5rem; color: #555; font-size: .88rem; border-top: 1px solid #ccc; }
"""


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value))


def _html_table(table: Table) -> str:
    if not table.rows:
        caption = f"<p><em>{_e(table.caption)}</em></p>" if table.caption else ""
        return f"{caption}<p>{_e(table.empty)}</p>"
    head = "".join(f"<th scope='col'>{_e(c)}</th>" for c in table.columns)
    body = "".join(
        "<tr>"
        + "".join(
            f"<td class='num'>{_e(f'{v:,}')}</td>"
            if isinstance(v, int) and not isinstance(v, bool)
            else f"<td>{_e(v)}</td>"
            for v in row
        )
        + "</tr>"
        for row in table.rows
    )
    caption = f"<caption>{_e(table.caption)}</caption>" if table.caption else ""
    return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _html_section(number: int, section: Section) -> str:
    parts = [f"<h2>{number}. {_e(section.heading)}</h2>"]
    parts += [f"<p>{_e(p)}</p>" for p in section.paragraphs]
    if section.facts:
        items = "".join(f"<dt>{_e(k)}</dt><dd>{_e(v)}</dd>" for k, v in section.facts)
        parts.append(f"<dl>{items}</dl>")
    if section.bullets:
        parts.append("<ul>" + "".join(f"<li>{_e(b)}</li>" for b in section.bullets) + "</ul>")
    parts += [_html_table(t) for t in section.tables]
    return "<section>" + "".join(parts) + "</section>"


def as_html(report: Report, context: ReportContext) -> str:
    who, when = _lines(report, context)
    sections = "".join(_html_section(n, s) for n, s in enumerate(report.sections, start=1))
    meta = "".join(f"<p class='meta'>{_e(w)}</p>" for w in when)
    return (
        "<!DOCTYPE html>\n<html lang='en'><head><meta charset='utf-8'>"
        f"<title>{_e(report.title)}</title>"
        f"<style>{_STYLE}</style></head><body>"
        f"<header><h1>{_e(report.title)}</h1>"
        f"<p class='meta'><strong>Controller:</strong> {_e(who)}</p>{meta}</header>"
        f"<p class='summary'>{_e(report.summary)}</p>{sections}"
        f"<footer><p>{_e(_source(context))}</p></footer></body></html>\n"
    )
