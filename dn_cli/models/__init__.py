"""Generator families and loading model files safely."""

from pathlib import Path

from dn_cli.models.loading import Generator, families, generator_of_module, load_generator

# The small trained generator shipped with dn (docs/demo-model.md), used when --model is omitted.
DEMO_MODEL = Path(__file__).parent / "weights" / "dab2aec_resnet_ngf16.pth"

__all__ = ["DEMO_MODEL", "Generator", "families", "generator_of_module", "load_generator"]
