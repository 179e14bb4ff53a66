"""Test-side helpers: an application git repo to release, and a fleet of hosts to deploy to.

A ``Fleet`` is either the three sshd hosts (each with its own deploy root under the test's
directory, as a per-host ``root`` override in ``deploy.hosts``) or one ``local`` target. It
builds Settings for library calls, writes an ``invoke.yaml`` for CLI runs, and reads the
hosts' layouts straight from disk to check what a command did.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from deploytools.config import Settings, load_settings

GIT_ENV = {
    "GIT_AUTHOR_NAME": "test",
    "GIT_AUTHOR_EMAIL": "test@example.invalid",
    "GIT_COMMITTER_NAME": "test",
    "GIT_COMMITTER_EMAIL": "test@example.invalid",
}


class AppRepo:
    """A git work tree standing for the application being released."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)
        self.git("init", "-q", "-b", "main")
        (path / "tasks.py").write_text("from deploytools.tasks import ns  # noqa: F401\n")
        self.commit({"app.py": "VERSION = 0\n"}, "initial")

    def git(self, *args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(self.path), *args],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, **GIT_ENV},
        ).stdout.strip()

    def commit(self, files: dict[str, str | None], message: str = "change") -> str:
        """Write (or, for None, delete) files and commit; returns the new sha."""
        for name, content in files.items():
            target = self.path / name
            if content is None:
                target.unlink()
            else:
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text(content)
        self.git("add", "-A")
        self.git("commit", "-q", "--allow-empty", "-m", message)
        return self.git("rev-parse", "HEAD")

    def bump(self) -> str:
        """A new commit, so the next release gets a new id."""
        count = len(self.git("rev-list", "HEAD").split())
        return self.commit({"app.py": f"VERSION = {count}\n"}, f"version {count}")


@dataclass
class Fleet:
    """The hosts of one test, each with its own deploy root on this machine's disk."""

    kind: str  # "ssh" or "local"
    entries: list[Any]
    roots: dict[str, Path]
    repo: AppRepo
    known_hosts: Path | None = None
    identity_file: Path | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return list(self.roots)

    def config(self, **deploy: Any) -> dict[str, Any]:
        """The invoke config mapping a user would write."""
        base: dict[str, Any] = {"hosts": self.entries, "repo": str(self.repo.path)}
        if self.known_hosts:
            base["known_hosts"] = str(self.known_hosts)
        if self.identity_file:
            base["identity_file"] = str(self.identity_file)
        datamig = deploy.pop("datamig", {})
        return {"deploy": {**base, **self.extra, **deploy}, "datamig": datamig}

    def settings(self, hosts: str | None = None, **deploy: Any) -> Settings:
        return load_settings(self.config(**deploy), hosts)

    def write_invoke_yaml(self, **deploy: Any) -> Path:
        """invoke.yaml beside the repo's tasks.py (JSON is valid YAML)."""
        path = self.repo.path / "invoke.yaml"
        path.write_text(json.dumps(self.config(**deploy), indent=2))
        return path

    def invoke(
        self,
        *args: str,
        timeout: float = 120,
        env: dict[str, str] | None = None,
        **deploy: Any,
    ) -> subprocess.CompletedProcess:
        """Run ``invoke ARGS`` in the repo, as a user would, with this fleet's invoke.yaml and
        ``env`` added to the environment."""
        self.write_invoke_yaml(**deploy)
        return subprocess.run(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.repo.path,
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self._env(env),
        )

    def start_invoke(
        self, *args: str, env: dict[str, str] | None = None, **deploy: Any
    ) -> subprocess.Popen:
        """Start ``invoke ARGS`` in the background (text pipes for stdout and stderr). The
        process has its own session: a signal sent to it reaches invoke alone, as Ctrl-C in
        the user's terminal would."""
        self.write_invoke_yaml(**deploy)
        return subprocess.Popen(
            [sys.executable, "-m", "invoke", *args],
            cwd=self.repo.path,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self._env(env),
            start_new_session=True,
        )

    def start_deploy_until(
        self, marker: Path, timeout: float = 30, **deploy: Any
    ) -> subprocess.Popen:
        """Start ``invoke deploy`` in the background and return once ``marker`` exists (a
        migration or a slow deploy.python touches it), so a test can strike mid-deploy."""
        process = self.start_invoke("deploy", **deploy)
        deadline = time.monotonic() + timeout
        while not marker.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                if process.poll() is None:
                    process.kill()
                raise AssertionError(f"{marker} never appeared: {process.communicate()}")
            time.sleep(0.01)
        return process

    @staticmethod
    def _env(extra: dict[str, str] | None) -> dict[str, str]:
        return {**os.environ, "COLUMNS": "200", **(extra or {})}

    # -- reading the hosts --------------------------------------------------------------------

    def root(self, host: str | None = None) -> Path:
        return self.roots[host or self.names[0]]

    def current(self, host: str) -> str | None:
        link = self.roots[host] / "current"
        if not link.is_symlink():
            return None
        return os.readlink(link).rsplit("/", 1)[-1]

    def currents(self) -> dict[str, str | None]:
        return {name: self.current(name) for name in self.names}

    def releases(self, host: str) -> list[str]:
        directory = self.roots[host] / "releases"
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir())

    def revisions(self, host: str) -> list[dict[str, Any]]:
        path = self.roots[host] / "revisions.jsonl"
        if not path.exists():
            return []
        return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]

    def locked(self, host: str) -> bool:
        return (self.roots[host] / "deploy.lock").exists()

    def snapshot(self) -> dict[str, Any]:
        """Everything a command could change on the hosts, to prove it changed nothing."""
        state = {}
        for name, root in self.roots.items():
            files = (
                sorted(
                    str(p.relative_to(root))
                    for p in root.rglob("*")
                    if not p.is_relative_to(root / "shared")
                )
                if root.exists()
                else []
            )
            state[name] = {
                "current": self.current(name),
                "files": files,
                "revisions": self.revisions(name),
                "locked": self.locked(name),
            }
        return state
