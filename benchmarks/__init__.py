"""Benchmarks: `python -m benchmarks.<name>` from the repository root; never collected by pytest,
not shipped in the wheel. Results: `benchmarks/results/<name>_<device>.json` (latest only)."""
