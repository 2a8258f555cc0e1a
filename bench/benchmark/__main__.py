"""``python -m bench.benchmark``: see the package docstring."""

from bench.benchmark import main

raise SystemExit(main())
