"""Importing this module registers every Wan node type with graphrt, and the disk codecs of its values."""
from . import (disk_codecs, image_nodes, io_nodes, latent_nodes, loader_nodes, sampler_nodes,  # noqa: F401
               step_cache_nodes, text_nodes, vace_nodes, vae_nodes)
