"""dn: translate gigapixel images tile by tile with Dense Normalization (seams measured: docs/quality.md)."""

__version__ = "0.1.0"
