"""Serving: the OpenAI-compatible HTTP API over herd models."""
