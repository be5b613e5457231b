"""Data: document sources -> token shards (memory-mapped, with document boundaries)."""
