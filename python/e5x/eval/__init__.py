"""e5x.eval (under construction)."""
