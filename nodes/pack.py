"""Importing this module registers every Wan node type with graphrt."""
from . import (image_nodes, io_nodes, latent_nodes, loader_nodes, sampler_nodes, text_nodes,  # noqa: F401
               vace_nodes, vae_nodes)
