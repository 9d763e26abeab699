"""e5x.synth (under construction)."""
