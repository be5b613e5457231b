"""Model code: single-device Llama-family Transformer, RoPE tables and the static KV cache."""
