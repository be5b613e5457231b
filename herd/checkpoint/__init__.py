"""Checkpoint folders (herd format) and conversion from/to Hugging Face, Meta and llama2.c."""
