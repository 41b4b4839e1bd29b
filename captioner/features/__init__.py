"""Per-frame CNN features: the on-disk cache and the one way clips are encoded into it."""
