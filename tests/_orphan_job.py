"""A worker job for tests/test_sklearn_mlp.py: sleeps, so only the parent's death can end it."""

import time


def sleep_job(spec: dict) -> None:
    time.sleep(spec["seconds"])
