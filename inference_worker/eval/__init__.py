"""Accuracy evaluation: RULER-style tasks, RetroInfer vs full attention, reports and plots.

Run it with `python -m inference_worker.eval` (see docs/eval.md).
"""

from inference_worker.eval.aggregate import summarize
from inference_worker.eval.config import EvalConfig, quick_config
from inference_worker.eval.prompt import Sample
from inference_worker.eval.scoring import score
from inference_worker.eval.tasks import TASKS, make_sample
from inference_worker.eval.tokens import PieceEncoder, default_tokenizer

__all__ = [
    "TASKS",
    "EvalConfig",
    "PieceEncoder",
    "Sample",
    "default_tokenizer",
    "make_sample",
    "quick_config",
    "score",
    "summarize",
]
