"""The README's code runs as printed: the layer-protocol example (a CNN's manual grads against
jax.grad, then one training epoch) is executed from the README's own text."""

import re
from pathlib import Path

README = Path(__file__).resolve().parents[1] / "README.md"


def _python_block(section: str) -> str:
    text = README.read_text()
    start = text.index(f"## {section}\n")
    end = text.index("\n## ", start + 5)
    return re.findall(r"```python\n(.*?)```", text[start:end], re.S)[0]


def test_layer_protocol_example_runs_and_agrees_with_jax_grad(capsys):
    namespace: dict = {}
    exec(compile(_python_block("The layer protocol"), "README.md", "exec"), namespace)  # noqa: S102
    printed = capsys.readouterr().out
    worst = float(re.search(r"worst rel err ([0-9.e+-]+)", printed).group(1))
    assert worst < 1e-5, printed
    assert bool(namespace["metrics"].params_finite)


def test_multi_host_script_runs_as_printed(capsys):
    """The Scaling section's train.py, single-host here (initialize_distributed is a no-op)."""
    exec(compile(_python_block("Scaling"), "README.md", "exec"), {})  # noqa: S102
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("epoch ")]
    assert len(lines) == 3
    assert float(lines[-1].rsplit(" ", 1)[1]) > 0.7  # val accuracy after 3 epochs
