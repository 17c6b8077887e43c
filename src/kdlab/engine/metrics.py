"""Held-out metrics: top-1/top-5, NLL, ECE, and how closely the student matches its teacher."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def ece(probs: torch.Tensor, y: torch.Tensor, bins: int = 15) -> float:
    """Expected calibration error with equal-width confidence bins (Guo et al. 2017)."""
    conf, pred = probs.max(1)
    correct = (pred == y).float()
    edges = torch.linspace(0, 1, bins + 1)
    total = torch.zeros(())
    for lo, hi in zip(edges[:-1], edges[1:]):
        m = (conf > lo) & (conf <= hi)
        if m.any():
            total += m.float().mean() * (conf[m].mean() - correct[m].mean()).abs()
    return float(total)


def classification_metrics(
    logits: torch.Tensor, y: torch.Tensor, t_logits: torch.Tensor | None = None, prefix: str = "test/"
) -> dict[str, float]:
    logits, y = logits.float().cpu(), y.cpu()
    k = min(5, logits.shape[1])
    topk = logits.topk(k, dim=1).indices
    out = {
        f"{prefix}top1": float((topk[:, 0] == y).float().mean()),
        f"{prefix}top5": float((topk == y[:, None]).any(1).float().mean()),
        f"{prefix}nll": float(F.cross_entropy(logits, y)),
        f"{prefix}ece": ece(logits.softmax(1), y),
    }
    if t_logits is not None:
        t_logits = t_logits.float().cpu()
        out[f"{prefix}agree"] = float((t_logits.argmax(1) == topk[:, 0]).float().mean())
        log_pt, log_ps = t_logits.log_softmax(1), logits.log_softmax(1)
        out[f"{prefix}kl_ts"] = float((log_pt.exp() * (log_pt - log_ps)).sum(1).mean())
    return out
