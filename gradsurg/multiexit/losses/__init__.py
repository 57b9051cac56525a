"""The multi-exit loss vocabulary: `functions` (math on tensors) and `terms` (registered,
recipe-named modules over all exits' logits). Groups of them live in `gradsurg.loss_groups`."""
