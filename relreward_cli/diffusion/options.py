"""The names a diffusion config chooses among, kept free of torch so that a config can be checked (and a bad one
refused) without importing it."""

SAMPLERS = ("ddpm", "ddim", "dpm")
PREDICTIONS = ("eps", "x0")
