"""What the MLP study presets share: the console while ``jnn.study`` runs and scikit-learn's
results alongside (the curves are the library's: ``jnn.plots.study_curves``).

A *cell* is one (activation, init, lr); its seeds are its models. The result as JSON and its
per-cell summaries (mean +- std over seeds) are library material: :mod:`jnn.summary`.
"""

from __future__ import annotations

import contextlib
import sys
import time
from typing import Any

import numpy as np
from tqdm.contrib.logging import logging_redirect_tqdm

from experiments import report

BAR_FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]"
"""The epoch bar without tqdm's own remaining time: the one ETA is the console's, which counts
scikit-learn as well (tqdm's would count jnn alone, compilation included)."""


class Console:
    """What a person watches: the start line, one bar over epochs (a terminal) or plain lines
    at save epochs (CI, logs), one overall ETA, divergence warnings as they happen,
    scikit-learn's finished epochs. The library only calls back; this prints.

    While the bar is open every other line (notices, warnings, Python warnings and log records)
    goes above it through ``tqdm.write``, so nothing is spliced into the bar; :meth:`close`
    closes it (ending its line) before anything else is printed."""

    def __init__(self, epochs: int, sklearn_jobs: int, quick: bool) -> None:
        self.epochs, self.sklearn_jobs, self.quick = epochs, int(sklearn_jobs or 0), quick
        self.counter: Any = None  # scikit-learn's shared epoch counter, when it runs
        self.bar: Any = None
        self.said_diverged: set[int] = set()
        self.names: list[str] = []
        self.resumed_from: int | None = None
        self.paces: list[float] = []  # seconds of this call's epochs after its first
        self.said_eta = False
        self.val_acc = ""  # the bar's last mean val accuracy
        self.clock = time.perf_counter
        self.sk_anchor: tuple[float, int] | None = None  # (time, epochs) when first seen > 0
        self._redirects = contextlib.ExitStack()

    def say(self, text: str, err: bool = False) -> None:
        """One line above the bar (stdout, or stderr for warnings)."""
        from tqdm.auto import tqdm

        tqdm.write(text, file=sys.stderr if err else sys.stdout)

    def start(self, s: Any) -> None:
        c = s.config
        self.names = [m.name for m in s.models]
        self.say(
            ("SMOKE RUN (--quick: checks that everything runs): " if self.quick else "")
            + _what_runs(s)
            + ("; scikit-learn alongside" if self.sklearn_jobs else "")
        )
        for skipped in s.skipped:
            self.say(
                f"warning: checkpoint of epoch {skipped.epoch} unusable ({skipped.reason})", True
            )
        self.resumed_from = s.resumed_from
        if s.resumed_from is not None:
            self.say(
                f"resumed every model from epoch {s.resumed_from} (its last checkpoint); "
                f"{c.epochs - s.resumed_from} epoch(s) to go"
            )
        first = s.resumed_from or 0
        self.bar = report.progress(
            total=c.epochs, initial=first, desc="epochs", unit="ep", bar_format=BAR_FORMAT
        )
        if not self.bar.disable:
            # Python warnings as one line above the bar instead of into it
            warnings_above = report.one_line_warnings(lambda line: self.say(line, True))
            self._redirects.enter_context(warnings_above)
            self._redirects.enter_context(logging_redirect_tqdm())

    def epoch(self, r: Any) -> None:
        finite = np.isfinite(r.rows["val_accuracy"]).any()
        acc = np.nanmean(r.rows["val_accuracy"]) if finite else np.nan
        self.val_acc = f"{acc:.4f}"
        self.show_sklearn(refresh=False)
        self.bar.update(1)  # one redraw: count and postfix together
        self.say_diverged(r.diverged_at)
        if r.nth >= 2:
            self.paces.append(r.seconds)  # the first epoch of a call includes compilation
        if r.epoch < r.epochs:
            self.say_eta(r.epochs - r.epoch)
        if self.bar.disable and (r.epoch % max(1, r.epochs // 10) == 0 or r.epoch == r.epochs):
            self.say(f"epoch {r.epoch}/{r.epochs}: mean val acc {acc:.4f}")

    def say_diverged(self, diverged_at: np.ndarray) -> None:
        """A warning per model as it diverges; those that had diverged before a resume, in one
        line (announced one by one, a resume's first epoch read as if they had just failed)."""
        new = [int(m) for m in np.flatnonzero(diverged_at) if int(m) not in self.said_diverged]
        self.said_diverged.update(new)
        before = [m for m in new if self.resumed_from and diverged_at[m] <= self.resumed_from]
        if before:
            names = ", ".join(f"{self.names[m]} (epoch {diverged_at[m]})" for m in before)
            self.say(
                f"note: {len(before)} model(s) had diverged before the resume at epoch "
                f"{self.resumed_from} and keep their last good states: {names}",
                True,
            )
        for m in (m for m in new if m not in before):
            self.say(
                f"warning: {self.names[m]} diverged at epoch {diverged_at[m]} "
                "(loss or weights not finite); kept its last good state, others go on",
                True,
            )

    def say_eta(self, jnn_left: int) -> None:
        """Say the overall ETA once, as soon as both paces are known (jnn's after its second
        epoch, scikit-learn's after its first; see :meth:`eta_line`)."""
        if self.said_eta:
            return
        line = self.eta_line(jnn_left)
        if line:
            self.said_eta = True
            self.say(line)

    def eta_line(self, jnn_left: int) -> str:
        """The one overall ETA: the run ends when jnn and scikit-learn (alongside, in its own
        processes) are both done, so it is the longer of the two at each one's pace. jnn's pace
        is the mean of this call's epochs after its first (which compiles; epochs restored by a
        resume are not counted); scikit-learn's, see :meth:`sklearn_left`. "" while either is
        unknown (said at a later epoch)."""
        sk_left = self.sklearn_left() if self.counter is not None else 0.0
        if not self.paces or sk_left is None:
            return ""
        pace = float(np.mean(self.paces))
        resumed = f", resumed from epoch {self.resumed_from}" if self.resumed_from else ""
        parts = [
            f"jnn {jnn_left} epoch(s) at {pace:.1f} s each{resumed}" if jnn_left else "jnn done"
        ]
        if self.counter is not None:
            parts.append(f"scikit-learn {self._sklearn_text()} epochs, {_duration(sk_left)} left")
        left = max(jnn_left * pace, sk_left)
        return f"eta: about {_duration(left)} left in all ({'; '.join(parts)})"

    def sklearn_left(self) -> float | None:
        """Seconds scikit-learn still needs at its steady pace, None while unknown. The pace is
        measured from the first time it is seen with an epoch done (its workers' start-up,
        several seconds of spawning and importing, comes before that and would swamp it):
        epochs done since then over the time since then."""
        done, total = sum(self.counter), self.epochs * self.sklearn_jobs
        now = self.clock()
        if done >= total:
            return 0.0
        if self.sk_anchor is None:
            self.sk_anchor = (now, done) if done > 0 else None
            return None
        since, first = self.sk_anchor
        return None if done == first else (total - done) * (now - since) / (done - first)

    def show_sklearn(self, refresh: bool = True) -> None:
        """The bar's postfix: mean val accuracy, and scikit-learn's finished epochs."""
        if self.bar is None:
            return
        postfix = {"val_acc": self.val_acc} if self.val_acc else {}
        if self.counter is not None:
            postfix["sklearn"] = self._sklearn_text()
        self.bar.set_postfix(postfix, refresh=refresh)

    def _sklearn_text(self) -> str:
        if self.counter is None:
            return ""
        return f"{sum(self.counter)}/{self.epochs * self.sklearn_jobs}"

    def close(self) -> None:
        """Close the bar (its line ends; on Ctrl-C too) and stop redirecting other output."""
        self._redirects.close()
        if self.bar is not None:
            self.bar.close()
            self.bar = None


def _what_runs(s: Any) -> str:
    """The start line: models, epochs, optimizer, set sizes, devices, layout."""
    c = s.config
    return (
        f"{len(s.models)} model(s) ({len(c.activations)} activation(s) x {len(c.inits)} "
        f"init(s) ({', '.join(c.inits)}) x "
        + (f"{len(c.optimizers)} optimizers x " if len(c.optimizers) > 1 else "")
        + f"{len(c.lrs)} lr(s) x {c.seeds} seed(s)) x "
        f"{c.epochs} epochs, {c.optimizer}; "
        f"{s.sizes[0]:,} train / {s.sizes[1]:,} val / {s.sizes[2]:,} test ({c.split}); "
        f"{len(s.devices)} device(s), layout {s.layout}"
        + (f" (probe: {_probe(s.layout_seconds)})" if s.layout_seconds else "")
    )


def _probe(seconds: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:.2f} s" for k, v in sorted(seconds.items()))


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 60 else f"{minutes // 60} h {minutes % 60:02d} min"


def collect_sklearn(futures: dict[str, Any] | None, console: Console) -> dict[str, Any] | None:
    """scikit-learn's results; a failed job is recorded (it must not lose jnn's results).
    While it is still training, the bar shows its finished epochs (polled once a second)."""
    from concurrent.futures import wait

    if futures is None:
        return None
    if any(not f.done() for f in futures.values()):
        console.say(f"jnn done; waiting for scikit-learn (epochs {console._sklearn_text()})")
        while wait(list(futures.values()), timeout=1.0).not_done:
            console.show_sklearn()
            console.say_eta(0)
    console.show_sklearn()  # its last count on the bar that stays
    out = {}
    for act, fut in futures.items():
        try:
            out[act] = fut.result()
        except Exception as err:  # noqa: BLE001 - recorded in the result, said in results.md
            out[act] = {"status": "failed", "error": f"{type(err).__name__}: {err}"}
    return out
