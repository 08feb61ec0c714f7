"""Relative rewards between image diffusion models (Stable Diffusion vs Safe Stable Diffusion) in latent space."""
