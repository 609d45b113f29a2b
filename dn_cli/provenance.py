"""What produced an output: recorded in its TIFF ImageDescription and in a sidecar JSON."""

from __future__ import annotations

import hashlib
import json
import sys
from datetime import datetime, timezone
from pathlib import Path

from dn_cli import __version__
from dn_cli.errors import OutputError
from dn_cli.outputs import os_reason


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def provenance(source: Path, model: str, model_sha256: str, family: str, settings: dict) -> dict:
    """Tool version, model (its file's full path, or what module it is) and its hash, settings,
    source and command line of one translation."""
    return {
        "software": f"dn {__version__}",
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "source": str(source.resolve()),
        "model": model,
        "model_sha256": model_sha256,
        "model_family": family,
        **settings,
        "command": [Path(sys.argv[0]).name, *sys.argv[1:]],
    }


def sidecar_path(output: Path) -> Path:
    """Where the provenance record of ``output`` goes: ``<output>.json`` beside it."""
    return output.with_name(output.name + ".json")


def write_sidecar(path: Path, record: dict) -> None:
    """The provenance record as JSON in ``path`` (a temporary that becomes :func:`sidecar_path`)."""
    try:
        path.write_text(json.dumps(record, indent=2) + "\n", encoding="utf-8")
    except OSError as e:
        raise OutputError(f"cannot write the provenance record {path.name}: {os_reason(e)}") from e


def read_sidecar(path: Path) -> dict | None:
    """A provenance record written by :func:`write_sidecar`; None if it is not one."""
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) else None
