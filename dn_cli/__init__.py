"""dn: translate gigapixel images tile by tile with Dense Normalization, without tiling artifacts."""

__version__ = "0.1.0"
