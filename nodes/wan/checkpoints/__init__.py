"""Where weights come from and how they are named: sources, file formats, key maps, presets, LoRA files, loaders."""
