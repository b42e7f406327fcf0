"""cosmos's own virtualenv for the task-graph benchmark (cosmos is never a dependency of this project), and the
measured packages' versions in either virtualenv."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from task_graph_harness import BENCH, ROOT, log

COSMOS_VENV = BENCH / ".work" / "cosmos-venv"
COSMOS_SET = ("astronomer-cosmos==1.15.1", "apache-airflow==3.3.2", "dbt-core>=1.11,<1.12", "dbt-duckdb")


def cosmos_python() -> tuple[Path, str]:
    """cosmos's own virtualenv (created once): its python, and how it was installed."""
    python = COSMOS_VENV / "bin" / "python"
    how = f"pip install {' '.join(COSMOS_SET)}"
    marker = COSMOS_VENV / ".installed"
    if marker.is_file():
        return python, marker.read_text().strip()
    log(f"creating {COSMOS_VENV}")
    subprocess.run(["python3.11", "-m", "venv", str(COSMOS_VENV)], check=True)
    pip = [str(python), "-m", "pip", "install", "--quiet"]
    if subprocess.run([*pip, *COSMOS_SET]).returncode != 0:
        how += f" -c {ROOT / 'requirements' / 'constraints.txt'}"
        subprocess.run([*pip, "-c", str(ROOT / "requirements" / "constraints.txt"), *COSMOS_SET], check=True)
    marker.write_text(how)
    return python, how


def versions(python: Path) -> dict[str, str]:
    """The measured packages' versions in a virtualenv."""
    code = (
        "import json\nfrom importlib import metadata\nout = {}\n"
        "for name in ('apache-airflow', 'dbt-core', 'dbt-duckdb', 'duckdb', 'astronomer-cosmos'):\n"
        "    try:\n        out[name] = metadata.version(name)\n"
        "    except metadata.PackageNotFoundError:\n        pass\nprint(json.dumps(out))"
    )
    try:
        return json.loads(subprocess.run([str(python), "-c", code], capture_output=True, text=True).stdout)
    except ValueError:
        return {}
