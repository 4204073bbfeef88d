"""Importing this module registers every Wan node type with graphrt."""
from . import conditioning, io, latents, loaders, sampling, vae  # noqa: F401
