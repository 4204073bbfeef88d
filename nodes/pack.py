"""Importing this module registers every Wan node type with graphrt."""
from . import conditioning, image_to_video, io, latents, loaders, sampling, vae  # noqa: F401
