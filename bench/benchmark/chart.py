"""benchmark.png: epoch, evaluation and VGG throughput per implementation, and vmap scaling."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from matplotlib.ticker import FuncFormatter, MaxNLocator

from bench.benchmark.render import SHORT_LABELS

PANELS = (
    ("train_epoch", "examples_per_s", "Training: examples/s (one epoch)"),
    ("evaluation", "examples_per_s", "Evaluation: examples/s (forward)"),
    ("vgg", "images_per_s", "VGG16 features at 32x32: images/s"),
    ("cnn", "examples_per_s", "CNN train step: examples/s"),
    ("study", "model_examples_per_s", "Main job preset vs per-device models:\nmodel-examples/s"),
)


def _bars(ax: Any, sec: dict[str, Any], field: str, title: str) -> None:
    """Horizontal bars from zero (a linear axis: bar lengths compare as the rates do)."""
    res = sec["results"]
    labels = [SHORT_LABELS.get(n, n) for n in res]
    values = [r[field] for r in res.values()]
    bars = ax.barh(labels, values, color="tab:blue")
    ax.bar_label(bars, [f"{v:,.0f}" if v >= 100 else f"{v:.3g}" for v in values], padding=2)
    ax.set_xlim(0, max(values) * 1.25)
    ax.xaxis.set_major_locator(MaxNLocator(4))  # big rates' tick labels would run together
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 100 else f"{v:g}"))
    load = sec.get("load") or {}
    if load.get("judged") is False:  # PyTorch's threads collapse under load: say so here too
        title += f"\nBUSY machine ({load.get('other_cores', '?')} cores elsewhere): not judged"
    ax.set_title(title, color="tab:red" if load.get("judged") is False else "black")
    ax.invert_yaxis()


def _vmap(ax: Any, res: dict[str, Any]) -> None:
    names = [n for n in res if n.endswith("_vmap")]
    ks = [str(res[n]["models"]) for n in names]
    rates = [res[n]["model_epochs_per_s"] for n in names]
    bars = ax.bar(ks, rates, color="tab:green")
    labels = [f"{res[n]['speedup_vs_1']:.2f}x" for n in names]
    ax.bar_label(bars, labels, label_type="center", color="white")  # clear of the line
    ax.set_ylim(0, max(rates) * 1.35)  # room for the legend above the bars
    if "1_plain" in res:
        one = res["1_plain"]["model_epochs_per_s"]
        ax.axhline(one, color="k", ls="--", label="1 model, no vmap")
        ax.legend(loc="upper left")
    ax.set_xlabel("models per XLA program (vmap)")
    ax.set_title("Model-epochs per second")


def _panels(secs: dict[str, Any]) -> list[Any]:
    """One drawing function per section that has results (a section not run gets no panel;
    results.md says why it did not run)."""
    panels = [
        (lambda ax, s=secs[key], f=field, t=title: _bars(ax, s, f, t))
        for key, field, title in PANELS
        if secs.get(key, {}).get("results")
    ]
    vmap = secs.get("models_per_program", {}).get("results", {})
    if any(n.endswith("_vmap") for n in vmap):
        panels.append(lambda ax: _vmap(ax, vmap))
    return panels


def render_chart(result: dict[str, Any], path: Path) -> Path:
    """Write one panel per measured section to ``path`` (Agg, atomically via
    jnn.plots.save_figure), at most three per row."""
    from matplotlib.figure import Figure

    from jnn.plots import save_figure

    panels = _panels(result["sections"]) or [lambda ax: ax.set_axis_off()]
    cols = min(3, len(panels))
    rows = -(-len(panels) // cols)
    fig = Figure(figsize=(5.7 * cols, 4 * rows), layout="tight")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, draw in zip(axes, panels):
        draw(ax)
    for ax in axes[len(panels) :]:
        ax.set_axis_off()
    fig.suptitle(f"jnn benchmark ({result['environment']['jax']['backend']})")
    return save_figure(fig, path)
