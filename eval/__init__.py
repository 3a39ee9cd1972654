"""Evaluation (installed as ``genbench.eval``): feature extractors, streaming statistics,
FID / IS / KID / precision-recall, reference statistics and their cache, image sources, and
``genbench.evaluate``."""
