"""Generator families and loading model files safely."""

from dn_cli.models.loading import Generator, load_generator

__all__ = ["Generator", "load_generator"]
