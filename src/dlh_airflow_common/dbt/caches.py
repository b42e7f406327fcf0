"""The caches around one dbt invocation: shared packages (``dbt deps``) and the last good partial parse."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dlh_airflow_common.dbt.artifacts import RUN_RESULTS
from dlh_airflow_common.dbt.channel import write_bytes_atomic
from dlh_airflow_common.dbt.command import DbtCommand
from dlh_airflow_common.dbt.invocation import DbtInvocation
from dlh_airflow_common.dbt.run_dir import RunDir

if TYPE_CHECKING:  # partial_parse and deps are imported when a cache is used
    from dlh_airflow_common.dbt.partial_parse import Seed

SEED_FILE = "cache_seed.json"  # a detached run's seed, in its run dir, for whoever collects it on this host


@dataclass(frozen=True)
class RunCaches:
    """Which caches a try uses and where they live; ``seed`` prepares an attempt, ``publish`` shares its parse."""

    partial_parse: bool = True
    deps: bool = True
    cache_dir: str | None = None
    venv_path: str | None = None

    def seed(
        self, project_dir: Path, run_dir: RunDir, command: DbtCommand, invocation: DbtInvocation, log: Any
    ) -> Seed | None:
        """Before dbt starts: cached packages (into ``invocation.env``), then the last good partial parse.

        Returns what ``publish`` needs once dbt has ended; None when there is nothing to publish.
        """
        from dlh_airflow_common.dbt import deps, partial_parse

        if not (self.partial_parse or self.deps):
            return None
        env = {**os.environ, **invocation.env}
        version = partial_parse.dbt_version(self.venv_path)
        try:
            root = partial_parse.cache_root(run_dir.path.parent, self.cache_dir)
            prepared = self.deps and deps.prepare_packages(
                project_dir, env, dbt_version=version, cache_root=root, command=command.command,
                run_dir=run_dir.path, venv_path=self.venv_path, mode=invocation.mode, log=log,
            )  # fmt: skip
        except OSError as err:  # a cache is an optimisation: without it dbt runs as it would anyway
            log.warning("dbt cache dir unavailable, running without partial-parse/package cache: %s", err)
            return None
        packages = None
        if prepared:
            invocation.env[deps.PACKAGES_PATH_ENV] = str(prepared.install_path)
            env[deps.PACKAGES_PATH_ENV] = str(prepared.install_path)
            packages = prepared.key
        if not self.partial_parse or not command.accepts("target_path"):
            return None
        if partial_parse.partial_parse_disabled(invocation.argv, env):
            return None
        if command.command == "retry" and (run_dir.target_path / partial_parse.PARTIAL_PARSE_FILE).is_file():
            return None  # the failed attempt's own parse is already there
        try:
            key = partial_parse.parse_key(invocation.argv, env, project_dir=project_dir, version=version,
                                          packages=packages)  # fmt: skip
            seed = partial_parse.PartialParseCache(root / "partial_parse").seed(key, run_dir.target_path)
        except OSError as err:
            log.warning("Partial-parse cache unavailable, dbt parses in full: %s", err)
            return None
        if seed.seeded:
            log.info("Partial parse seeded from cache %s", seed.entry)
        else:
            log.info("No cached partial parse for this project, target and vars yet: full parse.")
        # dbt retry re-parses with the vars of the run it retries, which its argv does not show: seed but
        # never publish, so an entry is only ever written under the key that produced it.
        return seed if command.command != "retry" else None

    @staticmethod
    def publish(seed: Seed | None, run_dir: RunDir, success: bool, log: Any) -> None:
        """Publish the msgpack dbt wrote (if it parsed) so the next isolated run starts from it."""
        from dlh_airflow_common.dbt.partial_parse import PartialParseCache

        # A failed run counts only if it got past parsing (a killed one may have left a truncated msgpack).
        if seed is None or not (success or (run_dir.target_path / RUN_RESULTS).is_file()):
            return
        try:
            if PartialParseCache(seed.entry.parent.parent).publish(seed):
                log.info("Published the new partial parse to cache %s", seed.entry)
        except OSError as err:
            log.warning("Could not publish the partial parse to the cache: %s", err)

    @staticmethod
    def keep_seed(seed: Seed | None, run_dir: RunDir) -> None:
        """Write a detached run's seed into its run dir: ``publish`` then runs where the run is collected."""
        if seed is None:
            return
        stamp = list(seed.local_stamp) if seed.local_stamp else None
        content = {"entry": str(seed.entry), "local": str(seed.local), "started_ns": seed.started_ns,
                   "seeded": seed.seeded, "local_stamp": stamp}  # fmt: skip
        write_bytes_atomic(run_dir.path / SEED_FILE, json.dumps(content).encode("utf-8"))

    @staticmethod
    def kept_seed(run_dir: RunDir) -> Seed | None:
        """The seed ``keep_seed`` wrote (None when there is none, or it is not readable)."""
        from dlh_airflow_common.dbt.partial_parse import Seed

        try:
            content = json.loads((run_dir.path / SEED_FILE).read_bytes())
            stamp = content["local_stamp"]
            return Seed(Path(content["entry"]), Path(content["local"]), int(content["started_ns"]),
                        bool(content["seeded"]), (int(stamp[0]), int(stamp[1])) if stamp else None)  # fmt: skip
        except (OSError, ValueError, KeyError, TypeError, IndexError):
            return None
