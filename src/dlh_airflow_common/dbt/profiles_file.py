"""A generated profiles.yml: a 0600 file in a 0700 dir (``<run dir>/profile``), removed with the run's files."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml

PROFILES_FILE = "profiles.yml"


def write_profiles_file(directory: Path, profile_name: str, target_name: str, target: Mapping[str, Any]) -> Path:
    """Write ``{profile: {target, outputs: {target_name: target}}}`` as a 0600 file in ``directory`` (made 0700)."""
    directory.mkdir(mode=0o700, exist_ok=True)
    document = {profile_name: {"target": target_name, "outputs": {target_name: dict(target)}}}
    fd = os.open(directory / PROFILES_FILE, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        yaml.safe_dump(document, handle, sort_keys=False, default_flow_style=False)
    return directory
