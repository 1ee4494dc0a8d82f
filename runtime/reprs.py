"""How Tidal's objects show themselves: one-line text reprs and small HTML tables for Jupyter.

A `Client`, a `LocalCluster`, a `TaskFuture` and a `MapFutures` each hand this module what
they know about themselves, as (label, value) rows; this module only formats them, so it
imports nothing of Tidal and the objects keep their own state private. `html_table` is
what their `_repr_html_` returns: Jupyter calls it to show an object that ends a cell.

Discussion: everything shown may come from a user or a peer (a task's error message, a job
id, an address, a dashboard link), so every value goes through `html.escape`, and a link is
made only of an http(s) address. A value that is not a `Link` or a `State` is shown as its
`str()`, escaped.
"""

from __future__ import annotations

import dataclasses
import html
from collections.abc import Sequence
from typing import Any

__all__ = ["STATE_COLOURS", "Link", "State", "html_table", "shorten", "text_repr"]

# The colour each state is shown in: what a future, a client or a cluster can be.
STATE_COLOURS = {
    "pending": "#5f6368",
    "running": "#1a73e8",
    "finished": "#1e8e3e",
    "failed": "#d93025",
    "cancelled": "#e37400",
    "connected": "#1e8e3e",
    "reconnecting": "#e37400",
    "closed": "#5f6368",
    "lost": "#d93025",
}

# Long messages are cut to this many characters in a one-line repr (HTML shows more).
TEXT_MAX_CHARS = 120
HTML_MAX_CHARS = 2000

Row = tuple[str, Any]


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """A value shown as a link in HTML (only if `url` is http or https), as `url` in text."""

    url: str

    def __str__(self) -> str:
        return self.url


@dataclasses.dataclass(frozen=True, slots=True)
class State:
    """A state word (a key of STATE_COLOURS), shown in its colour in HTML; `text`, if given,
    is shown instead of the word, in the word's colour (a count of futures in that state)."""

    word: str
    text: str | None = None

    def __str__(self) -> str:
        return self.word if self.text is None else self.text


def shorten(text: str, limit: int = TEXT_MAX_CHARS) -> str:
    """`text` on one line, cut to `limit` characters with "..." if it is longer."""
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def text_repr(kind: str, name: str, words: Sequence[Any]) -> str:
    """`<kind name word word ...>`, leaving out the words that are None."""
    shown = " ".join(shorten(str(word)) for word in words if word is not None)
    return f"<{kind} {name}{' ' + shown if shown else ''}>"


def html_table(kind: str, name: str, rows: Sequence[Row]) -> str:
    """A titled two-column table of `rows` (rows whose value is None are left out)."""
    cells = "".join(
        f'<tr><th style="text-align:left;padding:1px 12px 1px 0;font-weight:500">'
        f'{html.escape(label)}</th><td style="text-align:left">{_cell(value)}</td></tr>'
        for label, value in rows
        if value is not None
    )
    return (
        '<div class="tidal-repr" style="font-size:13px">'
        f"<strong>{html.escape(kind)}</strong> <code>{html.escape(str(name))}</code>"
        f'<table style="margin:2px 0 0 0;border-collapse:collapse">{cells}</table></div>'
    )


def _cell(value: Any) -> str:
    if isinstance(value, State):
        colour = STATE_COLOURS.get(value.word, "inherit")
        return f'<span style="color:{colour};font-weight:600">{html.escape(str(value))}</span>'
    if isinstance(value, Link):
        text = html.escape(value.url)
        if value.url.startswith(("http://", "https://")):
            return f'<a href="{html.escape(value.url, quote=True)}" target="_blank">{text}</a>'
        return text
    return html.escape(shorten(str(value), HTML_MAX_CHARS))
