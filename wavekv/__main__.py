"""`python -m wavekv` is the `wavekv` command."""

from wavekv.cli import main

main()
