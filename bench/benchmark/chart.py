"""benchmark.png: epoch, evaluation and VGG throughput per implementation, and vmap scaling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.benchmark.render import SHORT_LABELS

PANELS = (
    ((0, 0), "train_epoch", "examples_per_s", "Training: examples/s (one epoch)"),
    ((0, 1), "evaluation", "examples_per_s", "Evaluation: examples/s (forward)"),
    ((1, 1), "vgg", "images_per_s", "VGG16 features at 32x32: images/s"),
    ((0, 2), "cnn", "examples_per_s", "CNN train step: examples/s"),
)


def _bars(ax: Any, sec: dict[str, Any], field: str, title: str) -> None:
    from matplotlib.ticker import NullFormatter

    res = sec.get("results", {})
    if not res:
        ax.text(0.5, 0.5, sec.get("reason", "not run")[:80], ha="center", va="center",
                wrap=True, transform=ax.transAxes)  # fmt: skip
        ax.set_axis_off()
        return
    labels = [SHORT_LABELS.get(n, n) for n in res]
    values = [r[field] for r in res.values()]
    bars = ax.barh(labels, values, color="tab:blue")
    ax.bar_label(bars, [f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], padding=2)
    ax.set_xlim(min(values) / 2, max(values) * 4)
    ax.set_xscale("log")
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_title(title)
    ax.invert_yaxis()


def _vmap(ax: Any, res: dict[str, Any]) -> None:
    names = [n for n in res if n.endswith("_vmap")]
    if not names:
        ax.set_axis_off()
        return
    ks = [str(res[n]["models"]) for n in names]
    bars = ax.bar(ks, [res[n]["model_epochs_per_s"] for n in names], color="tab:green")
    ax.bar_label(bars, [f"{res[n]['speedup_vs_1']:.2f}x" for n in names], padding=2)
    if "1_plain" in res:
        one = res["1_plain"]["model_epochs_per_s"]
        ax.axhline(one, color="k", ls="--", label="1 model, no vmap")
        ax.legend()
    ax.set_xlabel("models per XLA program (vmap)")
    ax.set_title("Model-epochs per second")


def render_chart(result: dict[str, Any], path: Path) -> Path:
    """Write the 2x3 panel chart to ``path`` (Agg, atomically via jnn.plots.save_figure)."""
    from matplotlib.figure import Figure

    from jnn.plots import save_figure

    secs = result["sections"]
    fig = Figure(figsize=(17, 8), layout="tight")
    axes = fig.subplots(2, 3)
    for pos, key, field, title in PANELS:
        _bars(axes[pos], secs.get(key, {}), field, title)
    _vmap(axes[1, 0], secs.get("models_per_program", {}).get("results", {}))
    axes[1, 2].set_axis_off()
    fig.suptitle(f"jnn benchmark ({result['environment']['jax']['backend']})")
    return save_figure(fig, path)
