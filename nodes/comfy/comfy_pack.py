"""Importing this module registers the `comfy` pack's node types with graphrt (entry point `comfy`)."""
from . import (comfy_conditioning_nodes, comfy_image_nodes, comfy_latent_nodes, comfy_loader_nodes,  # noqa: F401
               comfy_sampler_nodes, comfy_utility_nodes, comfy_video_nodes)
