"""Benchmark scripts (``python bench/NAME.py``): each prints a table and writes JSON under
``bench/results/``. They use the library (``ofa.pipeline``, ``deploy``, ``search``) or run
the ``ofa`` command as a user would, never import ``ofa.cli`` (an import-linter contract)."""
