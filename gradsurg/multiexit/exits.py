"""Exits ("off-ramps"): a small classifier head after one encoder layer."""

from __future__ import annotations

from torch import Tensor, nn

from gradsurg.errors import ConfigError

__all__ = ["POOLINGS", "Exit", "check_pooling", "pool"]

POOLINGS = ("cls", "mean")


def check_pooling(pooling: str) -> str:
    """Reject unknown pooling names early, at construction rather than first forward."""
    if pooling not in POOLINGS:
        raise ConfigError(f"pooling {pooling!r} is not supported; allowed: {', '.join(POOLINGS)}")
    return pooling


def pool(hidden: Tensor, padding: Tensor, *, pooling: str) -> Tensor:
    """Hidden [B, T, H] -> [B, H]: token 0, or the mean over real tokens only.

    The mean is weighted by the padding mask so that pad positions (whose states are
    garbage but finite) cannot change the result; an all-pad row yields zeros, not NaN.
    """
    if pooling == "cls":
        return hidden[:, 0]
    if pooling == "mean":
        weights = padding.to(hidden.dtype).unsqueeze(-1)
        total = (hidden * weights).sum(dim=1)
        count = weights.sum(dim=1).clamp_min(1.0)
        return total / count
    check_pooling(pooling)
    raise AssertionError("unreachable")


class Exit(nn.Module):
    """Pooler-like ``Linear(H, H) + tanh``, dropout, then ``Linear(H, num_labels)``.

    Each exit brings its own pooler (as in DeeBERT) because a shallow layer's token-0
    state is not what a pooler trained on the last layer expects.
    """

    def __init__(
        self, hidden_size: int, num_labels: int, *, pooling: str = "cls", dropout: float = 0.1
    ) -> None:
        super().__init__()
        self.pooling = check_pooling(pooling)
        self.pooler = nn.Linear(hidden_size, hidden_size)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(hidden_size, num_labels)

    def forward(self, hidden: Tensor, padding: Tensor) -> Tensor:
        """Hidden [B, T, H] and padding mask [B, T] -> logits [B, num_labels]."""
        pooled = pool(hidden, padding, pooling=self.pooling)
        pooled = self.pooler(pooled).tanh()
        return self.classifier(self.dropout(pooled))
