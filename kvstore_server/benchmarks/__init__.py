"""Benchmarks (`python -m kvstore_server.benchmarks.<name>`); never collected by pytest."""
