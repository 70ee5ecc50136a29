"""The fine-tuning engine: latent cache, LoRA, DeepSpeed ZeRO under Ray Train, checkpoints."""
