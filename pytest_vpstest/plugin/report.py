"""pytest-html output: the connectivity matrix and per-pair table in the summary, and each suite
test's measurement as an extra of its row."""

from __future__ import annotations

import json
from collections.abc import Iterable
from html import escape
from typing import TYPE_CHECKING, Any

from pytest_vpstest.plugin.aggregate import MEASUREMENT_KEY, Collector, pair_rows
from pytest_vpstest.records.proof import render_matrix_html

if TYPE_CHECKING:
    from pytest_vpstest.plugin.fixtures import RunContext

__all__ = ["html_extras", "html_summary"]


def html_summary(collector: Collector, run: RunContext) -> list[str]:
    """HTML fragments for pytest-html's summary: the connectivity matrix and the per-pair table."""
    pairs = pair_rows(collector.measurements())
    if not pairs:
        return []
    parts = [
        f"<h2>pytest-vpstest: connectivity matrix (run {escape(run.run_id)})</h2>",
        render_matrix_html(pairs, run.inventory.names),
        "<h3>Per-pair measurements</h3><table>",
        "<tr><th>suite</th><th>from</th><th>to</th><th>method</th><th>success</th><th>rate</th>"
        "<th>Mbps</th><th>iperf3</th></tr>",
    ]
    for r in pairs:
        mbps = r.get("mbps") or []
        avg = f"{sum(mbps) / len(mbps):.1f}" if mbps else ""
        parts.append(
            "<tr>"
            + "".join(
                f"<td>{escape(str(x))}</td>"
                for x in (
                    r["suite"],
                    r["from"],
                    r["to"],
                    r["method"],
                    f"{r.get('success', '')}/{r.get('attempts', '')}",
                    r.get("rate", ""),
                    avg,
                    r.get("iperf3_mbps") or "",
                )
            )
            + "</tr>"
        )
    parts.append("</table>")
    return parts


def html_extras(user_properties: Iterable[tuple[str, object]]) -> list[dict[str, Any]]:
    """pytest-html extras for one test: its measurement as JSON."""
    for key, value in user_properties:
        if key == MEASUREMENT_KEY and isinstance(value, str):
            from pytest_html import extras

            extra: dict[str, Any] = extras.json(json.loads(value), name="vpstest measurement")
            return [extra]
    return []
