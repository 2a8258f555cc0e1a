"""The models in checkpoints/ load on a fresh clone and predict the accuracies results/ reports.

Tolerance: at most 2 of the 6,000 test images. The logits are computed on this machine's CPU,
the reported numbers on the one that trained them: float rounding may flip an image whose two
largest logits are within an ulp of each other, nothing more (a wrong model is off by hundreds).
"""

import json
from pathlib import Path

import pytest

from jnn import runs, study

REPO = Path(__file__).resolve().parents[1]
SHIPPED = REPO / "checkpoints" / "mlp_sweep"
REPORTED = json.loads((REPO / "results" / "mlp_sweep" / "results.json").read_text())


@pytest.fixture(scope="module")
def test_set(fashion_dir):
    c = study.config_of(study.read_run(SHIPPED), data_dir=str(fashion_dir))
    return study.load_data(c).test


@pytest.mark.parametrize("activation", ["relu", "sigmoid", "tanh", "linear"])
@pytest.mark.parametrize("epoch", [50, 100])
def test_shipped_model_predicts_the_reported_accuracy(activation, epoch, test_set):
    reported = next(
        m for m in REPORTED["models"] if m["activation"] == activation and m["seed"] == 0
    )
    net = runs.load(SHIPPED, activation, epoch)  # the name's leading part picks seed 0's model
    x, y = test_set
    correct = int((net.predict(x) == y).sum())
    if reported["diverged_at"] and reported["diverged_at"] <= epoch:
        assert net.epoch == reported["diverged_at"] - 1  # its last good state, said as such
        assert reported["evals"][str(epoch)]["test_accuracy"] is None  # never reported
    else:
        assert net.epoch == epoch
        want = round(reported["evals"][str(epoch)]["test_accuracy"] * len(y))
        assert abs(correct - want) <= 2, (correct, want)
