"""Importing this module registers every Wan node type with graphrt."""
from . import conditioning, image_to_video, io, latents, loaders, sampling, vace, vae  # noqa: F401
