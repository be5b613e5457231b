"""Post-training: supervised fine-tuning and preference optimisation data and losses."""
