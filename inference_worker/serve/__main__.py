"""`python -m inference_worker.serve` is `wavekv serve`."""

import sys

from inference_worker.serve.cli import main

sys.exit(main())
