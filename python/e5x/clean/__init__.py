"""e5x.clean (under construction)."""
