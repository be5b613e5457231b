"""Post-training on the one trainer: SFT and DPO data and losses, LoRA (herd/model/lora.py)."""
