"""A stand-in dbt in a fake virtualenv (``venv_path``) for unit tests that need real processes.

Its ``bin/dbt`` records each call (argv, pid, the secret it saw, whether its profile was written) in the file
named by ``FAKE_DBT_CALLS``, writes the run_results.json and manifest.json dbt would for one model, prints dbt's
JSON error event on failure and exits like dbt. ``FAKE_DBT_MODE``: ``ok``, ``fail`` (``dbt retry`` succeeds)
or ``sleep`` (until stopped).
"""

from __future__ import annotations

import json
import stat
import sys
import textwrap
from pathlib import Path
from typing import Any

FAKE_DBT = textwrap.dedent(
    """\
    #!{python}
    import json, os, sys, time
    args = sys.argv[1:]
    target = args[args.index("--target-path") + 1]
    profiles = args[args.index("--profiles-dir") + 1] if "--profiles-dir" in args else None
    os.makedirs(target, exist_ok=True)
    with open(os.environ["FAKE_DBT_CALLS"], "a") as calls:
        calls.write(json.dumps({{"args": args, "pid": os.getpid(), "secret": os.environ.get("DBT_ENV_SECRET_PW"),
                                "profile_written": bool(profiles)
                                and os.path.isfile(os.path.join(profiles, "profiles.yml"))}}) + "\\n")
    mode = os.environ.get("FAKE_DBT_MODE", "ok")
    if mode == "sleep":
        time.sleep(120)
    ok = mode == "ok" or args[0] == "retry"
    node = {{"unique_id": "model.proj.m", "status": "success" if ok else "error", "execution_time": 0.1,
            "message": None if ok else "Database Error in model m", "failures": None}}
    with open(os.path.join(target, "run_results.json"), "w") as out:
        json.dump({{"metadata": {{"invocation_id": str(os.getpid())}}, "elapsed_time": 0.1, "results": [node]}}, out)
    with open(os.path.join(target, "manifest.json"), "w") as out:
        json.dump({{"nodes": {{"model.proj.m": {{"resource_type": "model"}}}}}}, out)
    if not ok:
        print(json.dumps({{"info": {{"name": "RunResultError", "level": "error", "code": "Z024",
                                    "msg": "Database Error in model m"}},
                          "data": {{"msg": "Database Error in model m (models/m.sql)\\n  division by zero",
                                   "node_info": {{"unique_id": "model.proj.m", "node_status": "error",
                                                 "resource_type": "model"}}}}}}), flush=True)
    sys.exit(0 if ok else 1)
    """
)


def fake_dbt_venv(path: Path) -> Path:
    """A virtualenv at ``path`` whose ``bin/dbt`` is the stand-in."""
    dbt = path / "bin" / "dbt"
    dbt.parent.mkdir(parents=True)
    dbt.write_text(FAKE_DBT.format(python=sys.executable))
    dbt.chmod(dbt.stat().st_mode | stat.S_IXUSR)
    return path


def fake_dbt_calls(path: Path) -> list[dict[str, Any]]:
    """The calls the stand-in recorded in ``path``, oldest first."""
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []
