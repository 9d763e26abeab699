"""e5x.train (under construction)."""
