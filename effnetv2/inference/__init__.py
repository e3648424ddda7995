"""Inference copies of a model and the one comparison that judges them (and exports) against an fp64 reference."""
