"""The one report writer every method uses: `report.json`, `report.md` and `metrics.json` in the workdir."""

from __future__ import annotations

import json
import os

import jax

from anon_jax.files import atomic_write_text


def _markdown_table(rows: dict[str, dict[str, float]]) -> str:
    columns = sorted({c for row in rows.values() for c in row})
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [_format(row[c]) if c in row else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def write_report(workdir: str, *, title: str, metrics: dict[str, dict[str, float]], details: dict) -> dict:
    """Writes the report files (process 0 only) and returns the report dictionary.

    `metrics` maps a row name (e.g. "embed / standard AP") to its scalar metrics; `details` holds
    everything else worth keeping (config summary, dataset sizes, timings).
    """
    report = {"title": title, "metrics": metrics, "details": details}
    if jax.process_index() != 0:
        return report
    atomic_write_text(os.path.join(workdir, "report.json"), json.dumps(report, indent=2, sort_keys=True))
    atomic_write_text(os.path.join(workdir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True))
    detail_lines = [f"- **{k}**: {v}" for k, v in sorted(details.items())]
    markdown = f"# {title}\n\n{_markdown_table(metrics)}\n\n## Details\n\n" + "\n".join(detail_lines) + "\n"
    atomic_write_text(os.path.join(workdir, "report.md"), markdown)
    return report
