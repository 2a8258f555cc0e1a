"""Worker jobs for tests/test_reference.py (module-level, so a spawned worker can import them)."""

import sys
import time


def sleep_job(seconds: float) -> None:
    """Sleeps, so only the parent's death can end it."""
    time.sleep(seconds)


def jax_loaded(_: object) -> bool:
    """Whether the worker process has imported JAX (a jnn.reference worker must not)."""
    return "jax" in sys.modules
