"""Scaling laws: Chinchilla and IsoFLOP fits, mixed-modal interaction laws, downstream
prediction, compute-optimal planning and sweeps."""
