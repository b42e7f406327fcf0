"""A generated profiles.yml that lives only as long as one run: 0600 file in a 0700 temp dir."""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
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


@contextmanager
def temporary_profiles_dir(profile_name: str, target_name: str, target: Mapping[str, Any]) -> Iterator[Path]:
    """A profiles dir that exists only for the ``with`` block (a 0700 temp dir, removed afterwards)."""
    directory = Path(tempfile.mkdtemp(prefix="dlh-dbt-profile-"))  # mkdtemp creates it 0700
    try:
        yield write_profiles_file(directory, profile_name, target_name, target)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
