"""The fused id -> run-table kernel (with its padding-tail zeroing) and the header check kernel
against their torch references, on fresh random inputs (interpreted on CPU with
TRITON_INTERPRET=1, compiled on CUDA)."""

from __future__ import annotations

import pytest
import torch

from tests.interpret import run_check

CHECK = r"""
import sys, torch
from client import resolve_kernel as rk
seed, device = int(sys.argv[1]), sys.argv[2]
g = torch.Generator().manual_seed(seed)
for trial in range(4):
    s = int(torch.randint(1, 6, (1,), generator=g))
    clusters = torch.randint(0, 9, (s,), generator=g)
    clusters[-1] = 0 if trial == 0 else clusters[-1]  # an empty last head
    first = torch.zeros(s, dtype=torch.int64)
    first[1:] = clusters.cumsum(0)[:-1]
    first += 1  # column 0 is the sentinel
    t = int(clusters.sum()) + 1
    lens = torch.randint(0, 7, (t,), generator=g)
    starts = torch.randint(0, 1000, (t,), generator=g)
    cols = rk.Columns(starts, lens, first, clusters,
                      torch.randint(-500, 500, (s,), generator=g),
                      torch.randint(-500, 500, (s,), generator=g))
    e, n = int(torch.randint(1, 5, (1,), generator=g)), int(torch.randint(1, 9, (1,), generator=g))
    slot = torch.randint(0, s, (e,), generator=g)
    ids = torch.randint(-1, 10, (e, n), generator=g)
    if trial == 1:
        ids[0, 0] = -3
    max_tokens = int(torch.randint(1, 30, (1,), generator=g))
    move = lambda c: rk.Columns(*(x.to(device) for x in (c.starts, c.lens, c.first, c.clusters,
                                                      c.keys_row, c.values_row)))
    w = 2 ** int(torch.randint(0, 4, (1,), generator=g))
    garbage = torch.randint(1, 1 << 60, (2 * e * max_tokens, w), generator=g)  # [2EM, W]
    out_ref, out_got = garbage.clone(), garbage.to(device)
    ref = rk.resolve_rows_reference(cols, slot, ids, max_tokens, out_ref)
    got = rk.resolve_rows(move(cols), slot.to(device), ids.to(device), max_tokens, out_got)
    for name in ("src", "dst", "lens", "offsets", "bad_rows", "flags"):
        a, b = getattr(ref, name), getattr(got, name).cpu()
        if name in ("src", "dst"):  # only runs that copy something are defined alike
            a, b = a[ref.lens > 0], b[ref.lens > 0]
        assert torch.equal(a, b), (trial, name, a, b)
    # padding tails (slots past the rows a row receives) zeroed, every other slot untouched
    rows = ref.lens[: e * n].view(e, n).sum(-1)  # [E]
    tail = (torch.arange(max_tokens)[None, :] >= rows[:, None]).repeat(2, 1).view(-1)  # [2EM]
    assert torch.equal(out_got.cpu(), out_ref), (trial, "tails")
    assert not out_ref[tail].any() and torch.equal(out_ref[~tail], garbage[~tail]), trial
    plain = rk.resolve_rows(move(cols), slot.to(device), ids.to(device), max_tokens)
    assert torch.equal(plain.offsets.cpu(), ref.offsets), (trial, "without out")
from client import gather_kernel
for trial in range(4):
    words = torch.randint(-(1 << 62), 1 << 62, (512,), generator=g)  # [N] int64
    at = torch.randperm(255, generator=g)[:9] * 2  # [E] header word indices
    expected = torch.randint(1, 1 << 40, (9,), generator=g)
    words[at] = gather_kernel.EXTENT_MAGIC
    words[at + 1] = expected
    if trial:  # reuse: a changed generation, or a header overwritten by data
        words[at[trial] + (trial % 2)] += 1
    ref = gather_kernel.check_headers_reference(words, at, expected).any()
    flag = torch.zeros(3, dtype=torch.int64, device=device)
    gather_kernel.check_headers(words.to(device), at.to(device), expected.to(device), flag[2:])
    assert bool(flag[2]) == bool(ref) == (trial > 0) and not flag[:2].any(), (trial, flag)
print("ok")
"""


def _run(seed: int, device: str, interpret: bool) -> None:
    run_check(["-c", CHECK, str(seed), device], interpret=interpret, timeout=300)


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA: the compiled kernel is tested below")
def test_resolve_kernel_matches_reference_interpreted() -> None:
    pytest.importorskip("triton")
    for seed in (0, 1):
        _run(seed, "cpu", interpret=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_resolve_kernel_matches_reference_cuda() -> None:
    for seed in (0, 1, 2):
        _run(seed, "cuda", interpret=False)
