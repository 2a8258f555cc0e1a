"""``python -m experiments.benchmark``: see the package docstring."""

from experiments.benchmark import main

raise SystemExit(main())
