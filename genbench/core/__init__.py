"""The bottom layer: errors, the registry, atomic files, downloads, device, progress, noise."""
