"""Evidence and the proof document (``proof-<timestamp>.md``, docs/plugin.md "Outputs").

Rendering is pure (:func:`render_matrix`, :func:`render_proof`, :func:`prometheus_text`);
the writers put files under the state directory and return their paths.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pytest_vpstest._files import write_json_atomic, write_text_atomic
from pytest_vpstest.config import Inventory, Node
from pytest_vpstest.criteria import Verdict
from pytest_vpstest.nat_theory import group_target, split_group
from pytest_vpstest.nat_types import nat_rank
from pytest_vpstest.suite import CONNECTIVITY, METHODS

__all__ = [
    "MatrixCell",
    "ProofInput",
    "collect_logs",
    "dumps",
    "fix_commits_of",
    "format_duration",
    "matrix_grid",
    "prometheus_text",
    "render_matrix",
    "render_matrix_html",
    "render_nat_table",
    "render_proof",
    "write_connection_report",
    "write_metrics",
    "write_proof",
]

_LETTER = {"direct": "d", "holepunch": "h", "relay": "r"}


def _mark(success: int, attempts: int) -> str:
    if attempts == 0:
        return "·"
    if success == attempts:
        return "✓"
    if success == 0:
        return "✗"
    return f"{success}/{attempts}"


MatrixCell = dict[str, tuple[int, int]]  # method -> (success, attempts)


def matrix_grid(
    rows: Iterable[Mapping[str, Any]], nodes: Sequence[str] | None = None
) -> tuple[list[str], dict[tuple[str, str], MatrixCell]]:
    """The connectivity matrix as data: node order and, per (from, to), success/attempts per method."""
    cells: dict[tuple[str, str], dict[str, list[int]]] = {}
    seen: list[str] = []
    for r in rows:
        if r.get("suite") != CONNECTIVITY.name:
            continue
        src, dst = str(r["from"]), str(r["to"])
        for n in (src, dst):
            if n not in seen:
                seen.append(n)
        acc = cells.setdefault((src, dst), {}).setdefault(str(r["method"]), [0, 0])
        acc[0] += int(r.get("success", 0))
        acc[1] += int(r.get("attempts", 0))
    order = [n for n in (nodes or ()) if n in seen] + [n for n in seen if n not in (nodes or ())]
    grid = {key: {m: (v[0], v[1]) for m, v in methods.items()} for key, methods in cells.items()}
    return order, grid


def _cell_text(methods: MatrixCell) -> str:
    parts = [f"{_LETTER.get(m, m)}{_mark(*methods[m])}" for m in METHODS if m in methods]
    return " ".join(parts) if parts else "·"


def render_matrix(rows: Iterable[Mapping[str, Any]], nodes: Sequence[str] | None = None) -> str:
    """The connectivity matrix as a markdown table: rows = from, columns = to.

    A cell lists each method tried as ``d``/``h``/``r`` (direct, hole punch, relay) with ✓ (every
    attempt connected), ✗ (none did) or ``s/a`` (s of a attempts).
    """
    order, grid = matrix_grid(rows, nodes)
    if not order:
        return "_no connectivity measurements_\n"
    lines = [
        "| from \\ to | " + " | ".join(order) + " |",
        "|---|" + "---|" * len(order),
    ]
    for src in order:
        out = ["—" if src == dst else _cell_text(grid.get((src, dst), {})) for dst in order]
        lines.append(f"| **{src}** | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def render_matrix_html(rows: Iterable[Mapping[str, Any]], nodes: Sequence[str] | None = None) -> str:
    """The same matrix as an HTML table, each cell coloured: all connected, some, none."""
    from html import escape

    order, grid = matrix_grid(rows, nodes)
    if not order:
        return "<p>no connectivity measurements</p>"
    colour = {"all": "#c8e6c9", "some": "#fff3c4", "none": "#ffcdd2", "self": "#eeeeee"}
    head = "".join(f"<th>{escape(n)}</th>" for n in order)
    out = [
        '<table class="vpstest-matrix" style="border-collapse:collapse;font-family:monospace">',
        f"<tr><th>from \\ to</th>{head}</tr>",
    ]
    for src in order:
        tds = []
        for dst in order:
            methods = grid.get((src, dst), {})
            if src == dst:
                kind, text = "self", "—"
            else:
                ok = sum(v[0] for v in methods.values())
                tried = sum(v[1] for v in methods.values())
                kind = "none" if ok == 0 else "all" if ok == tried else "some"
                text = _cell_text(methods)
            tds.append(
                f'<td style="background:{colour[kind]};padding:2px 6px;border:1px solid #999">'
                f"{escape(text)}</td>"
            )
        out.append(f"<tr><th>{escape(src)}</th>{''.join(tds)}</tr>")
    out.append("</table>")
    out.append("<p>d = direct, h = hole punch, r = relay; ✓ every attempt connected, ✗ none, s/a some.</p>")
    return "".join(out)


def render_nat_table(rows: Iterable[Mapping[str, Any]]) -> str:
    """The NAT table: per NAT pairing of the nat_traversal rows, attempts, successes, rate, the rate
    expected of it and what NAT theory says ('' when the run has no nat_traversal rows)."""
    acc: dict[str, list[int]] = {}
    for r in rows:
        if r.get("suite") != "nat_traversal" or "group" not in r:
            continue
        a = acc.setdefault(str(r["group"]), [0, 0, 0, 0])
        a[0] += int(r.get("attempts", 0))
        a[1] += int(r.get("success", 0))
        a[2] += r.get("outcome") == "xfail"
        a[3] += r.get("outcome") == "xpass"
    if not acc:
        return ""
    lines = [
        "| NAT pairing | attempts | success | rate | expected | NAT theory |",
        "|---|---|---|---|---|---|",
    ]
    for group in sorted(acc, key=_group_order):
        attempts, success, xfail, xpass = acc[group]
        target = group_target(group)
        rate = f"{100.0 * success / attempts:.1f}%" if attempts else "n/a"
        if target is not None:
            expected, theory = f"≥ {target:g}%", "can be punched"
        else:
            expected, theory = "—", f"expected to fail ({xfail} expected failures"
            theory += f", {xpass} unexpected passes)" if xpass else ")"
        lines.append(f"| {group} | {attempts} | {success} | {rate} | {expected} | {theory} |")
    return "\n".join(lines) + "\n"


def _group_order(group: str) -> tuple[int, int, str]:
    try:
        a, b = split_group(group)
    except ValueError:
        return (99, 99, group)
    return (nat_rank(a), nat_rank(b), group)


def format_duration(seconds: float) -> str:
    s = round(seconds)
    h, rem = divmod(s, 3600)
    m, sec = divmod(rem, 60)
    if h:
        return f"{h}h {m}m"
    if m:
        return f"{m}m {sec}s"
    return f"{sec}s"


def _nodes_section(inventory: Inventory | None, tested: Sequence[str]) -> list[str]:
    lines = []
    if tested:
        lines.append("- " + ", ".join(tested))
    if inventory is not None:
        for n in inventory.nodes:
            if n.name in tested and n.nat != "none":
                lines.append(f"- NAT: {n.name} ({n.nat})")
    return lines or ["- none"]


def _criterion_line(c: Mapping[str, Any]) -> str:
    measured = c.get("measured")
    target = c.get("target")
    unit = "%" if str(c["metric"]).endswith("rate") else ""
    m_text = "not measured" if measured is None else f"{measured:g}{unit}"
    t_text = "" if target is None else f" (target: {c['op']} {target:g}{unit}"
    if t_text:
        gap = c.get("gap")
        t_text += f", gap {gap:+g})" if gap is not None else ")"
    mark = "✓" if c.get("passed") else "✗"
    return f"- {mark} {c['metric']}: {m_text}{t_text}"


@dataclass(frozen=True)
class ProofInput:
    project: str
    started_at: float
    finished_at: float
    verdict: Verdict
    focus: str = ""
    result_label: str | None = None
    evidence: Mapping[str, str] = field(default_factory=dict)
    fix_commits: Sequence[str] = ()
    nodes_tested: Sequence[str] = ()
    inventory: Inventory | None = None
    pairs: Sequence[Mapping[str, Any]] = ()
    run_id: str = ""
    reproduce: str = ""


def render_proof(p: ProofInput) -> str:
    """The proof markdown: date, duration, result, criteria, evidence, nodes, matrix."""
    label = p.result_label or ("PASSED" if p.verdict.passed else "FAILED")
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(p.finished_at))
    checks = [asdict(c) | {"gap": c.gap} for c in p.verdict.checks]
    met = [c for c in checks if c["passed"]]
    missed = [c for c in checks if not c["passed"]]
    out = [
        f"# Test Proof: {p.project}",
        f"## Date: {date} UTC",
        f"## Duration: {format_duration(p.finished_at - p.started_at)}",
        f"## Result: {label}",
        "",
        f"Focus: {p.focus or 'n/a'} · Criteria: {p.verdict.criteria}"
        + (f" (`{p.verdict.expression}`)" if p.verdict.expression else "")
        + (f" · Run: {p.run_id}" if p.run_id else ""),
        "",
        "### Success Criteria Met",
        *([_criterion_line(c) for c in met] or ["- none"]),
    ]
    if missed:
        out += ["", "### Criteria Not Met", *[_criterion_line(c) for c in missed]]
    if p.verdict.notes:
        out += ["", *[f"> {n}" for n in p.verdict.notes]]
    out += ["", "### Evidence"]
    out += [f"- {k}: {v_}" for k, v_ in p.evidence.items()]
    out.append(f"- Fix commits: {', '.join(p.fix_commits) if p.fix_commits else 'none'}")
    out += ["", "### Nodes Tested", *_nodes_section(p.inventory, p.nodes_tested)]
    order = list(p.inventory.names) if p.inventory is not None else None
    out += ["", "### Connectivity Matrix", "", render_matrix(p.pairs, order).rstrip()]
    out += ["", "Legend: d = direct, h = hole punch, r = relay; ✓ every attempt connected, ✗ none, s/a some."]
    nat_table = render_nat_table(p.pairs)
    if nat_table:
        out += ["", "### NAT Traversal by NAT Pairing", "", nat_table.rstrip()]
    if p.reproduce:
        out += ["", "### Reproduce", "", f"    {p.reproduce}"]
    return "\n".join(out) + "\n"


def write_proof(state_project_dir: Path, p: ProofInput) -> Path:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(p.finished_at))
    path = state_project_dir / f"proof-{stamp}.md"
    n = 1
    while path.exists():
        n += 1
        path = state_project_dir / f"proof-{stamp}-{n}.md"
    write_text_atomic(path, render_proof(p))
    return path


def fix_commits_of(state: Mapping[str, Any] | None) -> list[str]:
    """Short shas of the fix commits listed in a state document (its ``commits``)."""
    commits = (state or {}).get("commits") or []
    return [str(c.get("sha", ""))[:12] for c in commits if isinstance(c, Mapping) and c.get("sha")]


# --------------------------------------------------------------------------------------------
# Metrics


def _prom_name(name: str) -> str:
    return "vpstest_" + re.sub(r"[^A-Za-z0-9_]", "_", name)


def _prom_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def prometheus_text(metrics: Mapping[str, float], labels: Mapping[str, str]) -> str:
    """Metrics in the Prometheus text exposition format, one gauge per metric."""
    label_text = ",".join(f'{k}="{_prom_label(v)}"' for k, v in sorted(labels.items()))
    lines: list[str] = []
    for name in sorted(metrics):
        prom = _prom_name(name)
        lines.append(f"# HELP {prom} pytest-vpstest metric {name}")
        lines.append(f"# TYPE {prom} gauge")
        lines.append(f"{prom}{{{label_text}}} {metrics[name]!r}")
    return "\n".join(lines) + "\n"


def write_metrics(
    run_dir: Path, metrics: Mapping[str, float], test_results: Mapping[str, Any], labels: Mapping[str, str]
) -> dict[str, str]:
    json_path = run_dir / "metrics.json"
    prom_path = run_dir / "metrics.prom"
    write_json_atomic(
        json_path,
        {
            "schema_version": 1,
            "labels": dict(labels),
            "metrics": dict(metrics),
            "test_results": dict(test_results),
        },
    )
    write_text_atomic(prom_path, prometheus_text(metrics, labels))
    return {"Metrics": str(json_path), "Prometheus": str(prom_path)}


def write_connection_report(
    run_dir: Path, pairs: Sequence[Mapping[str, Any]], failures: Sequence[Mapping[str, Any]]
) -> dict[str, str]:
    """The per-pair connection report: every pair's numbers plus the raw evidence of failed attempts."""
    path = run_dir / "evidence" / "connections.json"
    write_json_atomic(path, {"schema_version": 1, "pairs": list(pairs), "failed_attempts": list(failures)})
    return {"Connection report": str(path)}


def collect_logs(nodes: Sequence[Node], fetch: Callable[[Node], str], logs_dir: Path) -> dict[str, str]:
    """Service logs of every node into ``logs_dir/<node>.log`` (a node that fails gets one line)."""
    logs_dir.mkdir(parents=True, exist_ok=True)
    for node in nodes:
        try:
            text = fetch(node)
        except Exception as exc:  # one node's failure must not stop collection from the others
            text = f"# could not collect logs from {node.name}: {type(exc).__name__}: {exc}\n"
        write_text_atomic(logs_dir / f"{node.name}.log", text)
    return {"Logs": str(logs_dir) + "/"}


def dumps(obj: Any) -> str:
    return json.dumps(obj, indent=2, sort_keys=True)
