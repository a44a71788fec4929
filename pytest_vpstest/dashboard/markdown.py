"""Proof markdown to HTML, with raw HTML in the source shown as text (never as markup)."""

from __future__ import annotations

from markdown_it import MarkdownIt

__all__ = ["render_markdown"]

# CommonMark plus tables; ``html=False`` escapes any HTML a node or test name smuggled into the file.
_MD = MarkdownIt("commonmark", {"html": False, "linkify": False}).enable("table")


def render_markdown(text: str) -> str:
    return str(_MD.render(text))
