"""The one report writer every method uses: `report.json`, `report.md`, `metrics.json`, PNG figures and the final
metrics in TensorBoard."""

from __future__ import annotations

import json
import os

import numpy as np

import matplotlib

matplotlib.use("Agg")  # files only; no display is needed or wanted
from matplotlib import pyplot as plt  # noqa: E402
from PIL import Image  # noqa: E402

from anon_jax.files import atomic_target, atomic_write_text
from anon_jax.training import multihost


def _markdown_table(rows: dict[str, dict[str, float]]) -> str:
    columns = list(dict.fromkeys(c for row in rows.values() for c in row))  # first-seen order
    lines = ["| | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, row in rows.items():
        cells = [_format(row[c]) if c in row else "" for c in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _format(value) -> str:
    return f"{value:.4f}" if isinstance(value, float) else str(value)


def plot_curves(path: str, curves: dict[str, list[float]], *, title: str, xlabel: str, ylabel: str) -> None:
    """One line per named curve (x = 1, 2, ...), saved as a PNG atomically."""
    figure, axes = plt.subplots(figsize=(6, 4), dpi=100)
    for name, values in curves.items():
        axes.plot(range(1, len(values) + 1), values, marker="o", markersize=3, label=name)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel, ylim=(0, 1.02))
    axes.grid(alpha=0.3)
    axes.legend(fontsize=8)
    save_figure(figure, path)


def save_figure(figure, path: str) -> None:
    """Saves a matplotlib figure as a PNG atomically (process 0 only) and closes it."""
    if multihost.is_primary():
        figure.tight_layout()
        with atomic_target(path) as tmp, open(tmp, "wb") as f:
            figure.savefig(f, format="png")
    plt.close(figure)


def write_report(workdir: str, *, title: str, metrics: dict[str, dict[str, float]], details: dict,
                 cmc_curves: dict[str, list[float]] | None = None, figures: tuple[str, ...] = ()) -> dict:
    """Writes the report files (process 0 only) and returns the report dictionary.

    `metrics` maps a row name (e.g. "embed / standard AP") to its scalar metrics; `details` holds
    everything else worth keeping (config summary, dataset sizes, timings); `cmc_curves` (row name ->
    CMC values at ranks 1..k) become `cmc.png`; `figures` names further PNGs already in the workdir.
    """
    report = {"title": title, "metrics": metrics, "details": details}
    if not multihost.is_primary():
        return report
    figures = list(figures)
    if cmc_curves:
        plot_curves(os.path.join(workdir, "cmc.png"), cmc_curves, title=title, xlabel="rank", ylabel="matching rate")
        figures.insert(0, "cmc.png")
    if figures:
        report["figures"] = figures
    atomic_write_text(os.path.join(workdir, "report.json"), json.dumps(report, indent=2, sort_keys=True))
    atomic_write_text(os.path.join(workdir, "metrics.json"), json.dumps(metrics, indent=2, sort_keys=True))
    detail_lines = [f"- **{k}**: {v}" for k, v in sorted(details.items())]
    markdown = f"# {title}\n\n{_markdown_table(metrics)}\n\n## Details\n\n" + "\n".join(detail_lines) + "\n"
    if figures:
        markdown += "\n## Figures\n\n" + "\n".join(f"![{name}]({name})" for name in figures) + "\n"
    atomic_write_text(os.path.join(workdir, "report.md"), markdown)
    return report


def write_tensorboard(writer, report: dict, workdir: str, *, step: int) -> None:
    """The report's metrics as "evaluation/<row>/<metric>" scalars and its figures as images, at `step`."""
    writer.write_scalars(step, {f"evaluation/{row}/{name}": value for row, values in report["metrics"].items()
                                for name, value in values.items()})
    images = {}
    for name in report.get("figures", ()):
        with Image.open(os.path.join(workdir, name)) as figure:
            images[f"evaluation/{name}"] = np.asarray(figure.convert("RGB"))[None]
    if images:
        writer.write_images(step, images)
    writer.flush()
