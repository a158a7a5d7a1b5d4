"""Plots written next to the data they show (PNG via matplotlib's Agg backend; no display needed)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

from mathrl import distributed


def pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def metrics_vs_x(history: Sequence[dict], x_key: str, metric_keys: Sequence[str], out_png: Path, title: str,
                 x_label: str) -> None:
    """One line per metric against ``x_key`` (e.g. rollouts consumed); the data goes to a JSON file beside the PNG."""
    out_png = Path(out_png)
    points = [h for h in history if x_key in h]
    if not distributed.is_main():
        return
    out_png.with_suffix(".json").write_text(json.dumps(
        {"x": x_key, "series": {k: [[h[x_key], h[k]] for h in points if k in h] for k in metric_keys}}, indent=1))
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4), dpi=110)
    for key in metric_keys:
        xs = [h[x_key] for h in points if key in h]
        ys = [h[key] for h in points if key in h]
        if xs:
            ax.plot(xs, ys, marker="o", label=key)
    ax.set_xlabel(x_label)
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png)
    plt.close(fig)
