"""Pinned third-party references as data (installed as ``genbench.vendor``): published
figures with their citations; no third-party code."""
