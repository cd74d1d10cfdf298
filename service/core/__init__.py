"""Foundations every layer of the service shares: settings, the error shape, metrics, fault points, version."""
