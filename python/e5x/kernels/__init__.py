"""e5x.kernels (under construction)."""
