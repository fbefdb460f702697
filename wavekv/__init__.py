"""The `wavekv` command: one entry point for the store, the server, jobs, the cluster, eval and
benchmarks (see `wavekv --help`). Each subcommand delegates to its component's own entry point,
imported only when that subcommand runs."""
