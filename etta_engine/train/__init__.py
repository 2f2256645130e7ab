"""Training: DiT (flow matching) and VAE (adversarial) trainers, data, checkpoints."""
