"""One self-contained HTML page per run folder: tables and inline SVG plots, no network needed."""

from .render import render_report, section

__all__ = ["render_report", "section"]
