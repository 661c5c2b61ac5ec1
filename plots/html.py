"""Self-contained HTML pages: figures inline as base64 PNG, every piece of text escaped.

Each helper returns `Html`, a str subclass that marks markup built here; anything else passed
in (a model's response, a run name) is text and goes through html.escape. The page loads
nothing: no scripts, no fonts, no external URLs.
"""

from __future__ import annotations

import base64
import html

from matplotlib.figure import Figure

from .style import to_bytes


class Html(str):
    """Markup produced by this module; safe to embed without escaping again."""


def text(value) -> Html:
    return value if isinstance(value, Html) else Html(html.escape(str(value), quote=True))


def join(*parts) -> Html:
    return Html("".join(text(p) for p in parts))


def heading(value, level: int = 2, anchor: str | None = None) -> Html:
    ident = f' id="{text(anchor)}"' if anchor else ""
    return Html(f"<h{level}{ident}>{text(value)}</h{level}>\n")


def paragraph(*parts, cls: str | None = None) -> Html:
    klass = f' class="{text(cls)}"' if cls else ""
    return Html(f"<p{klass}>{join(*parts)}</p>\n")


def code(value) -> Html:
    return Html(f"<code>{text(value)}</code>")


def pre(value) -> Html:
    return Html(f"<pre>{text(value)}</pre>\n")


def link(value, anchor: str) -> Html:
    """A link to an anchor on the same page (never to another URL)."""
    return Html(f'<a href="#{text(anchor)}">{text(value)}</a>')


def span(value, cls: str) -> Html:
    return Html(f'<span class="{text(cls)}">{text(value)}</span>')


def image(figure: Figure, alt: str, dpi: int = 100) -> Html:
    """The figure as an inline PNG data URI (a data: URL fetches nothing)."""
    data = base64.b64encode(to_bytes(figure, "png", dpi=dpi)).decode("ascii")
    return Html(f'<img src="data:image/png;base64,{data}" alt="{text(alt)}">\n')


def table(headers, rows) -> Html:
    head = "".join(f"<th>{text(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{text(c)}</td>" for c in row) + "</tr>\n" for row in rows)
    return Html(f"<table>\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n")


def details(summary, *body) -> Html:
    return Html(f"<details><summary>{text(summary)}</summary>\n{join(*body)}</details>\n")


def section(*body) -> Html:
    return Html(f"<section>\n{join(*body)}</section>\n")


STYLE = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; color: #212121;
       max-width: 1180px; margin: 2em auto; padding: 0 1.2em; }
h1 { font-size: 1.6em; margin-bottom: 0.2em; } h2 { border-bottom: 1px solid #e0e0e0; padding-bottom: 0.2em; margin-top: 2em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 13px; }
th, td { border-bottom: 1px solid #eeeeee; padding: 0.25em 0.7em; text-align: left; vertical-align: top; }
th { background: #fafafa; }
img { max-width: 100%; height: auto; display: block; margin: 0.6em 0; }
pre { background: #f5f5f5; padding: 0.6em; white-space: pre-wrap; word-break: break-word; max-height: 18em; overflow: auto; }
code { background: #f5f5f5; padding: 0 0.25em; }
.muted { color: #757575; } .bad { color: #c62828; font-weight: 600; } .good { color: #2e7d32; font-weight: 600; }
details { margin: 0.4em 0; } summary { cursor: pointer; }
"""


def page(title, *body) -> str:
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<title>{text(title)}</title>\n<style>{STYLE}</style>\n</head>\n<body>\n"
            f"<h1>{text(title)}</h1>\n{join(*body)}</body>\n</html>\n")
