"""Multilingual vocabulary construction: XLM-V per-cluster vocabularies, ALP, joint baseline."""
