"""Split-K partial attention results and their log-sum-exp combination (torch)."""

from __future__ import annotations

import torch


def combine_partials(
    m: torch.Tensor,  # [R, S, G] running max of the logits per split (-inf: empty split)
    l: torch.Tensor,  # [R, S, G] sum of exp(logit - m) (times cluster sizes for estimation)
    acc: torch.Tensor,  # [R, S, G, D] sum of exp(logit - m) * value
) -> tuple[torch.Tensor, torch.Tensor]:
    """Merge S splits: (o [R, G, D] fp32, lse [R, G] fp32); rows without mass give o = 0,
    lse = -inf."""
    top = m.amax(dim=1, keepdim=True).clamp(min=-1e30)  # [R, 1, G]
    w = torch.exp(m - top)  # [R, S, G]
    den = (w * l).sum(dim=1)  # [R, G]
    num = (w.unsqueeze(-1) * acc).sum(dim=1)  # [R, G, D]
    o = num / den.clamp(min=1e-30).unsqueeze(-1)
    lse = torch.where(den > 0, top.squeeze(1) + torch.log(den.clamp(min=1e-30)), float("-inf"))
    return o, lse
