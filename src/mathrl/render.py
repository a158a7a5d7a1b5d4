"""A report as data (sections of paragraphs, tables, lists, figures and code) and its two emitters, markdown and
self-contained HTML. The report is built once; both files are written from the same sections, so they show the
same text and numbers. Inline markup, in both: `code` (backticks); " -> " is drawn as an arrow in HTML."""

from __future__ import annotations

import base64
import html
import re
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Para:
    text: str
    small: bool = False  # a method note: smaller type in HTML
    bold: bool = False


@dataclass(frozen=True)
class Table:
    cols: list[str]
    rows: list[list[str]]


@dataclass(frozen=True)
class Item:
    """A list item: ``head`` in bold, then ``text``; ``status`` colours the head in HTML (holds, contradicted,
    inconclusive, not testable); ``children`` a nested list."""

    text: str = ""
    head: str = ""
    status: str = ""
    children: tuple[str, ...] = ()


@dataclass(frozen=True)
class Items:
    items: list[Item]


@dataclass(frozen=True)
class Figures:
    paths: list[Path]  # PNGs beside report.md; embedded in report.html


@dataclass(frozen=True)
class Code:
    lines: list[str]


Block = Para | Table | Items | Figures | Code


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    level: int = 2


# ----------------------------------------------------------------------------------------------------------
# markdown


def _md_cell(text: str) -> str:
    return text.replace("\n", " ").replace("|", "\\|")


def _md_block(b: Block) -> list[str]:
    if isinstance(b, Para):
        return [f"**{b.text}**" if b.bold else b.text]
    if isinstance(b, Table):
        if not b.rows:
            return []
        return (["| " + " | ".join(b.cols) + " |", "|---" * len(b.cols) + "|"]
                + ["| " + " | ".join(_md_cell(c) for c in r) + " |" for r in b.rows])
    if isinstance(b, Items):
        out = []
        for it in b.items:
            head = f"**{it.head}**" if it.head else ""
            out.append("- " + " ".join(x for x in (head, it.text) if x))
            out += [f"  - {c}" for c in it.children]
        return out
    if isinstance(b, Figures):
        return [f"![{p.stem}]({p.name})" for p in b.paths]
    return ["```", *b.lines, "```"]


def markdown(sections: list[Section]) -> str:
    lines = []
    for s in sections:
        lines += ([""] if lines else []) + ["#" * s.level + " " + s.title]
        for b in s.blocks:
            got = _md_block(b)
            lines += [""] + got if got else []
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# HTML

STATUS_CSS = {"holds": "ok", "contradicted": "no", "inconclusive": "inc", "not testable": "nt"}
STYLE = ("body{font-family:sans-serif;max-width:1200px;margin:2em auto;color:#222}table{border-collapse:collapse}"
         "td,th{border:1px solid #ccc;padding:4px 8px;font-size:13px}img{max-width:100%}.small{font-size:12px}"
         "li.ok>b{color:#176b17}li.no>b{color:#9b1c1c}li.inc>b{color:#8a6d00}li.nt>b{color:#555}figure{margin:1em 0}"
         "pre{font-size:11px;white-space:pre-wrap}")


def _inline(text: str) -> str:
    """Escaped text with `code` spans, and " -> " as an arrow."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text)).replace(" -&gt; ", " &rarr; ")


def _html_block(b: Block) -> str:
    if isinstance(b, Para):
        text = f"<b>{_inline(b.text)}</b>" if b.bold else _inline(b.text)
        return f"<p class='small'>{text}</p>" if b.small else f"<p>{text}</p>"
    if isinstance(b, Table):
        if not b.rows:
            return ""
        return ("<table><tr>" + "".join(f"<th>{html.escape(c)}</th>" for c in b.cols) + "</tr>"
                + "".join("<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in r) + "</tr>" for r in b.rows)
                + "</table>")
    if isinstance(b, Items):
        out = []
        for it in b.items:
            css = f' class="{STATUS_CSS[it.status]}"' if it.status in STATUS_CSS else ""
            head = f"<b>{_inline(it.head)}</b>" if it.head else ""
            sub = "<ul>" + "".join(f"<li>{_inline(c)}</li>" for c in it.children) + "</ul>" if it.children else ""
            out.append(f"<li{css}>" + " ".join(x for x in (head, _inline(it.text)) if x) + sub + "</li>")
        return "<ul>" + "".join(out) + "</ul>"
    if isinstance(b, Figures):
        return "".join(f'<figure><img alt="{html.escape(p.stem)}" src="data:image/png;base64,'
                       f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{html.escape(p.stem)}'
                       "</figcaption></figure>" for p in b.paths)
    return "<pre>" + html.escape("\n".join(b.lines)) + "</pre>"


def page(sections: list[Section], title: str) -> str:
    body = "".join(f"<h{s.level}>{_inline(s.title)}</h{s.level}>" + "".join(_html_block(b) for b in s.blocks)
                   for s in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{STYLE}</style></head><body>{body}</body></html>")
