"""Model definitions: the DiT, the Oobleck VAE, the conditioners and the text encoder."""
