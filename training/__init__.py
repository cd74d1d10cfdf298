"""Offline training package: data readers, synthetic data, samplers, losses, loop, evaluation and CLIs."""
