"""Token reduction inside and after the tower: ToMe merging (tome) and top-k pruning (prune)."""
