"""Fine-tuning: the training loop, models, launch and the per-configuration job lock."""
