"""Evaluation protocols: per-stage linear probe, weighted kNN, random-init floor."""
