"""Check what a built jnn wheel ships: the package with its py.typed marker, nothing else.

Usage: ``python .ci/check_wheel.py dist/jnn-*.whl``. Exits 1, naming the offending paths, when
the wheel lacks ``jnn/__init__.py`` or ``jnn/py.typed`` (without the marker, type checkers
ignore the annotations of an installed jnn), or carries a top-level folder of the checkout that
is not the library (tests, studies, measurements, run outputs, weights).
"""

from __future__ import annotations

import sys
import zipfile

REQUIRED = ("jnn/__init__.py", "jnn/py.typed")
FORBIDDEN = ("tests/", "experiments/", "bench/", "runs/", "results/", "checkpoints/")


def problems(names: list[str]) -> list[str]:
    """What is wrong with a wheel whose archive holds ``names`` (empty: nothing)."""
    found = [f"missing {path}" for path in REQUIRED if path not in names]
    found += [f"ships {name}" for name in names if name.startswith(FORBIDDEN)]
    tops = sorted({name.split("/", 1)[0] for name in names})
    stray = [t for t in tops if t != "jnn" and not t.endswith(".dist-info")]
    found += [f"unexpected top-level entry {t}" for t in stray if f"{t}/" not in FORBIDDEN]
    return found


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not argv[0].endswith(".whl"):
        print("usage: python .ci/check_wheel.py PATH.whl (exactly one wheel)", file=sys.stderr)
        return 2
    with zipfile.ZipFile(argv[0]) as wheel:
        names = wheel.namelist()
    found = problems(names)
    for line in found:
        print(f"{argv[0]}: {line}", file=sys.stderr)
    if not found:
        print(f"{argv[0]}: {len(names)} files, jnn/ and jnn/py.typed, no checkout folders")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
