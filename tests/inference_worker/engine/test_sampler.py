"""Batched device sampling against plain references: greedy, the nucleus, the distribution of
Gumbel-max draws, and independence from the batch a row runs in."""

from __future__ import annotations

import math

import torch

from inference_worker.engine.sampler import SamplingBatch, gumbel, nucleus_mask, sample


def _params(n: int, temperature: float, top_p: float, seeds: list[int], step: int = 0):
    return SamplingBatch.of([temperature] * n, [top_p] * n, seeds, [step] * n, torch.device("cpu"))


def test_greedy_rows_take_the_argmax_whatever_the_other_rows_do() -> None:
    logits = torch.randn(4, 50, generator=torch.Generator().manual_seed(0))
    params = SamplingBatch.of([0.0, 1.0, 0.0, 0.7], [1.0, 0.9, 0.5, 1.0], [1, 2, 3, 4],
                              [0, 5, 9, 2], torch.device("cpu"))  # fmt: skip
    got = sample(logits, params)
    assert got[0] == logits[0].argmax() and got[2] == logits[2].argmax()


def test_nucleus_mask_matches_a_plain_reference() -> None:
    gen = torch.Generator().manual_seed(1)
    for _ in range(20):
        logp = torch.log_softmax(torch.randn(3, 40, generator=gen) * 3, dim=-1)
        top_p = torch.rand(3, generator=gen).clamp(min=0.05)
        got = nucleus_mask(logp, top_p)
        for r in range(3):
            probs = logp[r].exp().tolist()
            order = sorted(range(40), key=lambda i: -probs[i])
            want, mass = set(), 0.0
            for i in order:  # the smallest prefix whose mass reaches top_p
                want.add(i)
                mass += probs[i]
                if mass >= top_p[r]:
                    break
            assert set(torch.nonzero(got[r]).view(-1).tolist()) == want


def test_draws_follow_the_tempered_softmax() -> None:
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0])
    n = 6000
    draws = sample(logits.expand(n, 5), _params(n, 0.8, 1.0, list(range(n))))
    freq = torch.bincount(draws, minlength=5).double() / n
    want = torch.softmax(logits.double() / 0.8, dim=-1)
    for f, p in zip(freq.tolist(), want.tolist(), strict=True):
        assert abs(f - p) < 4 * math.sqrt(p * (1 - p) / n) + 1e-3, (freq, want)


def test_top_p_never_draws_outside_the_nucleus() -> None:
    logits = torch.tensor([3.0, 2.9, 0.0, -1.0, -2.0])  # nucleus at 0.9: tokens 0 and 1
    n = 2000
    draws = sample(logits.expand(n, 5), _params(n, 1.0, 0.9, list(range(n))))
    assert set(draws.tolist()) == {0, 1}


def test_a_rows_draw_depends_only_on_its_seed_and_step() -> None:
    logits = torch.randn(6, 100, generator=torch.Generator().manual_seed(2))
    batch = sample(logits, _params(6, 1.0, 0.95, [11, 12, 13, 14, 15, 16], step=3))
    for r in range(6):
        alone = sample(logits[r : r + 1], _params(1, 1.0, 0.95, [11 + r], step=3))
        assert alone.item() == batch[r].item()
    a = gumbel(torch.tensor([7]), torch.tensor([0]), 1000)
    b = gumbel(torch.tensor([7]), torch.tensor([1]), 1000)
    assert torch.equal(a, gumbel(torch.tensor([7]), torch.tensor([0]), 1000))
    assert not torch.equal(a, b) and bool(torch.isfinite(a).all())
