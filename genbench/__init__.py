"""genbench: benchmark image generative models side by side."""
