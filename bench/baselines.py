"""Reference trainers the benchmark times jnn against, all for the same MLP and plain SGD.

* :class:`NumpyMLP`: how the original study trained: a Python loop over batches of float32 numpy
  matmuls with a hand-written forward/backward and an in-place SGD update.
* :class:`TorchMLP`: PyTorch eager (``nn.Linear`` + ReLU, ``F.cross_entropy``, ``optim.SGD``) on
  a chosen device. Optional: :func:`torch_status` says why it cannot run when torch is missing.

Each has ``train_epoch(x, y) -> mean loss`` (shuffles, drops the last partial batch) and
``predict(x) -> logits``, and starts from the same weights as a jnn dense parameter list
(``jnn.mlp.dense_params(params)``, ``[{"w": (in, out), "b": (out,)}, ...]``). The third
reference, scikit-learn's ``MLPClassifier`` as plain SGD, is the study's own and lives in the
library: ``jnn.reference`` (``make_classifier``, ``train_epoch``, ``settings``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from jnn.errors import InputError

MLPWeights = list[tuple[np.ndarray, np.ndarray]]  # [(w (in, out), b (out,)), ...] float32


def weights_from_jnn(params: Sequence[dict[str, Any]]) -> MLPWeights:
    """Copy the dense layers' ``{"w", "b"}`` into float32 numpy (w, b) pairs: pass
    ``jnn.mlp.dense_params(params)`` of an ``mlp.mlp`` model's params."""
    return [
        (np.array(layer["w"], np.float32, copy=True), np.array(layer["b"], np.float32, copy=True))
        for layer in params
    ]


def random_weights(sizes: Sequence[int], seed: int = 0) -> MLPWeights:
    """He-normal float32 weights and zero biases for ``sizes`` (when no jnn params are at hand)."""
    rng = np.random.default_rng(seed)
    return [
        (
            (rng.standard_normal((n_in, n_out)) * np.sqrt(2.0 / n_in)).astype(np.float32),
            np.zeros(n_out, np.float32),
        )
        for n_in, n_out in zip(sizes[:-1], sizes[1:])
    ]


class NumpyMLP:
    """ReLU MLP trained by per-batch numpy matmuls (float32), softmax cross-entropy, plain SGD."""

    def __init__(self, weights: MLPWeights, lr: float = 0.1, batch_size: int = 32, seed: int = 0):
        self.weights = [(w.astype(np.float32), b.astype(np.float32)) for w, b in weights]
        self.lr = np.float32(lr)
        self.batch_size = int(batch_size)
        self.rng = np.random.default_rng(seed)

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Logits (N, C) of float32 inputs (N, D)."""
        h = x
        for i, (w, b) in enumerate(self.weights):
            h = h @ w + b
            if i < len(self.weights) - 1:
                np.maximum(h, 0, out=h)
        return h

    def loss_and_grads(self, xb: np.ndarray, yb: np.ndarray) -> tuple[float, MLPWeights]:
        """Mean cross-entropy and its gradients for one batch (xb (B, D) float32, yb (B,) int)."""
        acts = [xb]
        h = xb
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(self.weights):
            h = h @ w + b
            if i < last:
                h = np.maximum(h, 0)
                acts.append(h)
        n = xb.shape[0]
        shifted = h - h.max(axis=1, keepdims=True)
        exp = np.exp(shifted)
        total = exp.sum(axis=1, keepdims=True)
        rows = np.arange(n)
        loss = float(np.mean(np.log(total[:, 0]) - shifted[rows, yb]))
        d = exp / total  # softmax
        d[rows, yb] -= 1
        d *= np.float32(1.0 / n)
        grads: MLPWeights = [None] * len(self.weights)  # type: ignore[list-item]
        for i in range(last, -1, -1):
            a = acts[i]
            grads[i] = (a.T @ d, d.sum(axis=0))
            if i > 0:  # the input needs no gradient
                d = (d @ self.weights[i][0].T) * (a > 0)
        return loss, grads

    def train_epoch(self, x: np.ndarray, y: np.ndarray) -> float:
        """One shuffled epoch of plain SGD; the last partial batch is dropped. Mean batch loss."""
        n = x.shape[0] // self.batch_size * self.batch_size
        perm = self.rng.permutation(x.shape[0])[:n]
        total = 0.0
        for start in range(0, n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            loss, grads = self.loss_and_grads(x[idx], y[idx])
            total += loss
            for (w, b), (gw, gb) in zip(self.weights, grads):
                w -= self.lr * gw
                b -= self.lr * gb
        return total / max(n // self.batch_size, 1)


def torch_status() -> tuple[bool, str]:
    """(True, version) when PyTorch imports, else (False, why not)."""
    try:
        import torch
    except Exception as err:  # ImportError, or a broken install
        return False, f"torch not importable ({type(err).__name__}: {err}); pip install torch"
    return True, str(torch.__version__)


def resolve_torch_device(requested: str = "auto") -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one fails."""
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise InputError("--torch-device cuda asked for, but torch.cuda.is_available() is False")
    if requested not in ("cpu", "cuda"):
        raise InputError(f"torch device must be auto, cpu or cuda, got {requested!r}")
    return requested


_TORCH_PRECISION = {
    "float32": "highest", "tf32": "high", "bfloat16": "medium", "bfloat16_3x": "high"
}  # fmt: skip


def match_torch_precision(torch_device: str, jax_matmul: str) -> dict[str, Any]:
    """Set PyTorch's float32 matmul and cuDNN convolution precision to what JAX computes
    (``jax_matmul``, from :func:`jnn.workdir.float32_matmul`), so both sides of a CUDA
    comparison do the same arithmetic: PyTorch's defaults are full float32 matmuls but TF32
    convolutions, JAX's default on a GPU is TF32 for both (cuDNN has no bfloat16 switch: at
    "bfloat16" its convolutions stay TF32). On the CPU nothing changes. Returns the settings
    now in force."""
    import torch

    if jax_matmul not in _TORCH_PRECISION:
        choices = ", ".join(_TORCH_PRECISION)
        raise InputError(f"jax_matmul must be one of {choices}, got {jax_matmul!r}")
    if torch_device == "cuda":
        torch.set_float32_matmul_precision(_TORCH_PRECISION[jax_matmul])
        torch.backends.cudnn.allow_tf32 = jax_matmul != "float32"
    return {
        "float32_matmul_precision": torch.get_float32_matmul_precision(),
        "cudnn_allow_tf32": bool(torch.backends.cudnn.allow_tf32),
        "matched_to_jax": jax_matmul,
    }


class TorchMLP:
    """The same MLP in PyTorch eager mode: nn.Linear + ReLU, F.cross_entropy, optim.SGD."""

    def __init__(
        self,
        weights: MLPWeights,
        lr: float = 0.1,
        batch_size: int = 32,
        device: str = "cpu",
        seed: int = 0,
    ):
        import torch
        from torch import nn

        self.torch = torch
        self.device = torch.device(device)
        layers: list[Any] = []
        for i, (w, b) in enumerate(weights):
            lin = nn.Linear(w.shape[0], w.shape[1])
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(np.ascontiguousarray(w.T)))
                lin.bias.copy_(torch.from_numpy(b))
            layers.append(lin)
            if i < len(weights) - 1:
                layers.append(nn.ReLU())
        self.model = nn.Sequential(*layers).to(self.device)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=lr)
        self.batch_size = int(batch_size)
        self.generator = torch.Generator(device=self.device).manual_seed(seed)

    def to_device(self, x: np.ndarray, y: np.ndarray | None = None) -> tuple[Any, Any]:
        """numpy arrays -> tensors on this model's device (labels as int64)."""
        xt = self.torch.from_numpy(np.ascontiguousarray(x, np.float32)).to(self.device)
        yt = None if y is None else self.torch.from_numpy(y.astype(np.int64)).to(self.device)
        return xt, yt

    def synchronize(self) -> None:
        """Wait for queued GPU work (no-op on CPU)."""
        if self.device.type == "cuda":
            self.torch.cuda.synchronize(self.device)

    def train_epoch(self, x: Any, y: Any) -> float:
        """One shuffled epoch on tensors from :meth:`to_device`; drops the last partial batch."""
        torch = self.torch
        import torch.nn.functional as F

        n = x.shape[0] // self.batch_size * self.batch_size
        perm = torch.randperm(x.shape[0], device=self.device, generator=self.generator)[:n]
        total = torch.zeros((), device=self.device)
        self.model.train()
        for start in range(0, n, self.batch_size):
            idx = perm[start : start + self.batch_size]
            self.optimizer.zero_grad(set_to_none=True)
            loss = F.cross_entropy(self.model(x[idx]), y[idx])
            loss.backward()
            self.optimizer.step()
            total += loss.detach()
        result = float(total) / max(n // self.batch_size, 1)  # float() synchronizes
        return result

    def predict(self, x: Any) -> Any:
        """Logits for a tensor from :meth:`to_device` (no autograd)."""
        with self.torch.inference_mode():
            out = self.model(x)
        self.synchronize()
        return out
