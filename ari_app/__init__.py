"""ARI client and Stasis controller."""
