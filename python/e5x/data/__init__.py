"""e5x.data (under construction)."""
