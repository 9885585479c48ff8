"""della-bench: DELLA and Transformer-VAE baselines, trained and evaluated reproducibly."""

__version__ = "0.1.0"
