"""Evaluation: Belebele and generic multiple choice, perplexity / bits per byte, lm-eval bridge."""
