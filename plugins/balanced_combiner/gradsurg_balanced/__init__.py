"""gradsurg plugin: the `balanced_sum` combiner, registered through `gradsurg.combiners`."""

from gradsurg_balanced.balanced_sum import BalancedSum

__all__ = ["BalancedSum"]
