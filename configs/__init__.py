"""Generator family descriptions, one TOML file each; installed as the package ``dn_cli.configs``."""
