"""The names a diffusion config chooses among, in a module free of torch, so that importing the config schema (and
`relreward --help`) imports none."""

SAMPLERS = ("ddpm", "ddim", "dpm")
PREDICTIONS = ("eps", "x0")
