"""Measurement apart from the studies: the benchmark (sections of ratios measured side by side),
the probes that explain its numbers, device scaling, and the reference trainers (numpy,
PyTorch, scikit-learn) it times jnn against. Each runs as ``python -m bench.NAME``, imports
``jnn`` and the shared harness of ``experiments`` (run folders, stamps, one-line errors), and no
study imports it.
"""
