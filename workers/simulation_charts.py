"""PNG charts of a simulation run and of a parameter sweep, drawn headless.

Built on `Figure` + `FigureCanvasAgg` rather than pyplot: nothing registers the figures in a
global state, so a worker that draws thousands of charts holds none of them afterwards and no GUI
backend is ever chosen.
"""

import math
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from workers.simulation import SimulationResult

FIGURE_SIZE = (12, 6)  # inches, at DPI: 1200 x 600 pixels
DPI = 100
# Names on the heatmap's axes stay readable up to this many agents.
MAX_LABELLED_AGENTS = 30
# Values written into the sweep heatmap's cells up to this many rows or columns.
MAX_ANNOTATED_CELLS = 12
RUN_METRIC_LINES = (
    ("mean_affinity", "mean affinity"),
    ("cohesion", "cohesion"),
    ("cooperation_rate", "cooperation rate"),
)


def _new_figure(title: str) -> Figure:
    figure = Figure(figsize=FIGURE_SIZE, dpi=DPI, layout="constrained")
    FigureCanvasAgg(figure)
    if title:
        figure.suptitle(title)
    return figure


def _save(figure: Figure, path: Path) -> None:
    figure.savefig(Path(path), format="png", dpi=DPI)
    figure.clear()  # drops the artists now rather than whenever the figure is collected


def render_run_chart(result: SimulationResult, agent_names: list[str], path: Path, *, title: str = "") -> None:
    """Metrics per round (events marked) on the left, the final compatibility matrix on the right."""
    figure = _new_figure(title)
    grid = figure.add_gridspec(2, 2, width_ratios=(3, 2), height_ratios=(3, 2))
    metrics_axes = figure.add_subplot(grid[0, 0])
    counts_axes = figure.add_subplot(grid[1, 0], sharex=metrics_axes)
    heatmap_axes = figure.add_subplot(grid[:, 1])

    rounds = np.arange(1, result.rounds_run + 1)
    for name, label in RUN_METRIC_LINES:
        if name in result.metrics:
            metrics_axes.plot(rounds, result.metrics[name], label=label, linewidth=1.2)
    metrics_axes.set_ylim(-1.05, 1.05)
    metrics_axes.axhline(0.0, color="black", linewidth=0.5)
    metrics_axes.set_ylabel("per round")
    metrics_axes.legend(loc="lower left", fontsize=8)
    metrics_axes.grid(alpha=0.3)

    if "conflicts" in result.metrics:
        counts_axes.plot(rounds, result.metrics["conflicts"], color="tab:red", label="conflicts", linewidth=1.2)
    if "interactions" in result.metrics:
        counts_axes.plot(
            rounds, result.metrics["interactions"], color="tab:gray", label="interactions", linewidth=0.8, alpha=0.7
        )
    counts_axes.set_xlabel("round")
    counts_axes.set_ylabel("count")
    counts_axes.set_ylim(bottom=0)
    counts_axes.legend(loc="upper left", fontsize=8)
    counts_axes.grid(alpha=0.3)

    event_rounds = sorted({event["round"] for event in result.events_fired})
    for event_round in event_rounds:
        for axes in (metrics_axes, counts_axes):
            axes.axvline(event_round, color="tab:purple", linestyle="--", linewidth=0.8, alpha=0.7)
    if event_rounds:
        metrics_axes.plot([], [], color="tab:purple", linestyle="--", linewidth=0.8, label="event")
        metrics_axes.legend(loc="lower left", fontsize=8)

    _draw_compatibility(heatmap_axes, figure, result.compatibility, agent_names)
    _save(figure, path)


def _draw_compatibility(axes, figure: Figure, compatibility: np.ndarray, agent_names: list[str]) -> None:
    image = axes.imshow(compatibility, cmap="RdBu", vmin=-1.0, vmax=1.0, interpolation="nearest")
    figure.colorbar(image, ax=axes, shrink=0.8, label="compatibility")
    axes.set_title("compatibility")
    count = len(agent_names)
    if count <= MAX_LABELLED_AGENTS:
        ticks = np.arange(count)
        axes.set_xticks(ticks, labels=agent_names, rotation=90, fontsize=7)
        axes.set_yticks(ticks, labels=agent_names, fontsize=7)
    else:
        axes.set_xlabel(f"{count} agents")
        axes.set_xticks([])
        axes.set_yticks([])


def _number(value) -> float:
    return math.nan if value is None else float(value)


def _format_value(value) -> str:
    return f"{value:g}" if isinstance(value, int | float) else str(value)


def render_sweep_chart(rows: list[dict], path: Path, *, metric: str = "cohesion", title: str = "") -> None:
    """One swept parameter: each metric's mean (with std bars) against it; two: a heatmap of `metric`'s mean;
    none or more: a bar of `metric`'s mean per grid point."""
    figure = _new_figure(title)
    swept = sorted({name for row in rows for name in row["overrides"]})
    if not rows:
        axes = figure.add_subplot()
        axes.text(0.5, 0.5, "no successful grid points", ha="center", va="center", transform=axes.transAxes)
        axes.set_axis_off()
    elif len(swept) == 1:
        _draw_sweep_lines(figure, rows, swept[0], metric)
    elif len(swept) == 2:
        _draw_sweep_heatmap(figure, rows, swept, metric)
    else:
        _draw_sweep_bars(figure, rows, metric)
    _save(figure, path)


def _draw_sweep_lines(figure: Figure, rows: list[dict], parameter: str, highlighted: str) -> None:
    metrics = list(rows[0]["mean"])
    all_axes = figure.subplots(1, len(metrics), squeeze=False)[0]
    values = [_number(row["overrides"].get(parameter)) for row in rows]
    order = np.argsort(values, kind="stable")
    x = np.array(values)[order]
    for axes, name in zip(all_axes, metrics, strict=True):
        mean = np.array([_number(row["mean"].get(name)) for row in rows])[order]
        std = np.nan_to_num(np.array([_number(row["std"].get(name)) for row in rows])[order])
        axes.errorbar(x, mean, yerr=std, marker="o", capsize=3, linewidth=1.2)
        axes.set_title(name, fontweight="bold" if name == highlighted else "normal")
        axes.set_xlabel(parameter)
        axes.grid(alpha=0.3)
    all_axes[0].set_ylabel("mean over replications (± std)")


def _draw_sweep_heatmap(figure: Figure, rows: list[dict], parameters: list[str], metric: str) -> None:
    across, down = parameters
    column_values = sorted({row["overrides"][across] for row in rows if across in row["overrides"]})
    row_values = sorted({row["overrides"][down] for row in rows if down in row["overrides"]})
    grid = np.full((len(row_values), len(column_values)), np.nan)
    for row in rows:
        if across in row["overrides"] and down in row["overrides"]:
            cell = (row_values.index(row["overrides"][down]), column_values.index(row["overrides"][across]))
            grid[cell] = _number(row["mean"].get(metric))
    axes = figure.add_subplot()
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", origin="lower", aspect="auto")
    figure.colorbar(image, ax=axes, label=f"mean {metric}")
    axes.set_xticks(np.arange(len(column_values)), labels=[_format_value(value) for value in column_values])
    axes.set_yticks(np.arange(len(row_values)), labels=[_format_value(value) for value in row_values])
    axes.set_xlabel(across)
    axes.set_ylabel(down)
    axes.set_title(f"mean {metric}")
    if len(row_values) <= MAX_ANNOTATED_CELLS and len(column_values) <= MAX_ANNOTATED_CELLS:
        for (down_index, across_index), value in np.ndenumerate(grid):
            if not math.isnan(value):
                # Dark text on the light end of viridis, light text on the dark end.
                color = "black" if image.norm(value) > 0.6 else "white"
                axes.text(across_index, down_index, f"{value:.3g}", ha="center", va="center", fontsize=8, color=color)


def _draw_sweep_bars(figure: Figure, rows: list[dict], metric: str) -> None:
    labels = [
        ", ".join(f"{name}={_format_value(value)}" for name, value in sorted(row["overrides"].items())) or "defaults"
        for row in rows
    ]
    mean = [_number(row["mean"].get(metric)) for row in rows]
    std = np.nan_to_num([_number(row["std"].get(metric)) for row in rows])
    axes = figure.add_subplot()
    positions = np.arange(len(rows))
    axes.bar(positions, mean, yerr=std, capsize=3, color="tab:blue")
    axes.set_xticks(positions, labels=labels, rotation=60, ha="right", fontsize=7 if len(rows) <= 40 else 5)
    axes.set_ylabel(f"mean {metric} (± std)")
    axes.set_title(f"mean {metric} per grid point")
    axes.grid(axis="y", alpha=0.3)
