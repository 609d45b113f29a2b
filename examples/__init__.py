"""The sample slide that ships with dn (examples/sample_ihc.tif), importable as package data."""
