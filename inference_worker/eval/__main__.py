"""Entry point: `python -m inference_worker.eval --help`."""

from inference_worker.eval.cli import main

raise SystemExit(main())
