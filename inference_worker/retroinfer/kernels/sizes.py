"""Launch-size arithmetic shared by the kernel wrappers."""

from __future__ import annotations


def next_pow2(n: int) -> int:
    """The smallest power of two >= n (1 for n <= 1): a Triton block that holds n."""
    return 1 << max(n - 1, 0).bit_length()


def cdiv(a: int, b: int) -> int:
    """ceil(a / b) for a >= 0, b > 0: programs that cover a elements, b apiece."""
    return (a + b - 1) // b
