"""Evaluation: metrics on arrays, re-ranking, whole-model evaluation, the challenge export."""
