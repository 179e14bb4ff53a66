#!/usr/bin/env python3
"""The README's two commands: ``python3 dev.py demo`` and ``python3 dev.py test``.

Both need nothing but Python 3.11+ and the Debian packages named in the README. They create
``.venv`` beside this file, install the project there, and re-run themselves inside it.

- ``demo``: deploy this repository to a local directory (``.demo/app``) on the embedded
  default (SQLite ledger), with the article's ``feature_flags`` table prepared and a
  throwaway ``redis-server``; the flags migration runs as the post-deploy step; then the
  migration status and the flags read back from Redis are printed. Run it again: the second
  deploy applies nothing.
- ``test``: ruff (lint and format), then the whole test suite against real sshd, PostgreSQL and
  Redis on loopback. As root it installs missing system packages with apt-get; otherwise it
  prints the line to run. The wheels of deploytools' dependencies are fetched once from the
  package registry into ``.wheelhouse/`` (reused while complete) for the tests that install
  environments offline; ``uv`` is installed into ``.venv`` for them.

Any Python 3.11+ that every user running the command can execute will do; a non-root user
needs one outside root's home, e.g. Debian's ``/usr/bin/python3`` (with ``python3-venv``).
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import shutil
import subprocess
import sys
import venv
from pathlib import Path

HERE = Path(__file__).resolve().parent
VENV = HERE / ".venv"
VENV_PYTHON = VENV / "bin" / "python"
DEMO = HERE / ".demo"
WHEELHOUSE = HERE / ".wheelhouse"

# what each command needs from the system: (executable, glob or Python module, Debian package)
DEMO_NEEDS = [
    ("git", "git"),
    ("redis-server", "redis-server"),
    ("module:ensurepip", "python3-venv"),
]
TEST_NEEDS = [
    *DEMO_NEEDS,
    ("/usr/sbin/sshd", "openssh-server"),
    ("ssh-keygen", "openssh-client"),
    ("/usr/lib/postgresql/*/bin/initdb", "postgresql"),
]


def missing_packages(needs: list[tuple[str, str]]) -> list[str]:
    missing = []
    for thing, package in needs:
        if thing.startswith("module:"):
            found = importlib.util.find_spec(thing.removeprefix("module:"))
        else:
            found = glob.glob(thing) if "/" in thing else shutil.which(thing)
        if not found and package not in missing:
            missing.append(package)
    return missing


def ensure_system_packages(needs: list[tuple[str, str]]) -> None:
    missing = missing_packages(needs)
    if not missing:
        return
    line = "apt-get update && apt-get install -y --no-install-recommends " + " ".join(missing)
    if os.geteuid() != 0:
        sys.exit(
            f"missing system packages: {', '.join(missing)}. Install them with:\n  sudo {line}"
        )
    print(f"installing {', '.join(missing)} ...", flush=True)
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["sh", "-c", line], check=True, env=env, stdout=subprocess.DEVNULL)


def in_venv(extra: str, *more: str) -> None:
    """Re-run this script inside .venv with the project (and ``extra``, and the requirements
    ``more``) installed."""
    if Path(sys.prefix).resolve() == VENV.resolve():
        return
    if not VENV_PYTHON.exists():
        print("creating .venv ...", flush=True)
        try:
            venv.create(VENV, with_pip=True)
        except (subprocess.CalledProcessError, OSError):
            shutil.rmtree(VENV, ignore_errors=True)
            sys.exit("python3 cannot create a virtual environment: install python3-venv")
    install = ["-e", f"{HERE}{extra}", *more]
    stamp = VENV / f".installed{extra}"
    if (
        not stamp.exists()
        or stamp.read_text() != " ".join(install)
        or stamp.stat().st_mtime < (HERE / "pyproject.toml").stat().st_mtime
    ):
        print(f"installing deploytools{extra} {' '.join(more)} into .venv ...", flush=True)
        pip = subprocess.run(
            [str(VENV_PYTHON), "-m", "pip", "install", "-q", *install],
            capture_output=True,
            text=True,
        )
        if pip.returncode != 0:
            sys.exit(f"pip install failed:\n{pip.stdout}{pip.stderr}")
        stamp.write_text(" ".join(install))
    os.execv(str(VENV_PYTHON), [str(VENV_PYTHON), __file__, *sys.argv[1:]])


def pyproject() -> dict:
    import tomllib

    return tomllib.loads((HERE / "pyproject.toml").read_text())


def host_pythons() -> list[str]:
    """The interpreters the test hosts build environments with (the system ``python3`` on
    their PATH) and this one: dependency markers differ between patch releases (redis needs
    async-timeout below 3.11.3), so each resolves its own wheels."""
    pythons = [sys.executable]
    system = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if system and Path(system).resolve() != Path(sys.executable).resolve():
        pythons.append(system)
    return pythons


def pip_of(python: str) -> list[str]:
    """A pip that runs under ``python`` (Debian's python3 may have none: a venv of it has)."""
    if subprocess.run([python, "-m", "pip", "--version"], capture_output=True).returncode == 0:
        return [python, "-m", "pip"]
    helper = WHEELHOUSE / f".pip-{Path(python).name}"
    if not (helper / "bin" / "pip").exists():
        subprocess.run([python, "-m", "venv", str(helper)], check=True, capture_output=True)
    return [str(helper / "bin" / "python"), "-m", "pip"]


def fill_wheelhouse() -> None:
    """Wheels of deploytools' dependencies in .wheelhouse/, for the tests that build a
    release's environment with ``--no-index``: reused when complete, else fetched from the
    package registry (once per run at most), for every Python the hosts may use."""
    requirements = pyproject()["project"]["dependencies"]
    WHEELHOUSE.mkdir(exist_ok=True)
    for python in host_pythons():
        download = [*pip_of(python), "download", "-q", "--only-binary=:all:"]
        download += ["--disable-pip-version-check", "--dest", str(WHEELHOUSE)]
        cached = subprocess.run(
            [*download, "--isolated", "--no-index", "--find-links", str(WHEELHOUSE), *requirements],
            capture_output=True,
        )
        if cached.returncode == 0:
            continue
        print(
            f"fetching the wheels of deploytools' dependencies for {python} into .wheelhouse/ ...",
            flush=True,
        )
        fetched = subprocess.run([*download, *requirements], capture_output=True, text=True)
        if fetched.returncode != 0:
            tail = "\n".join(fetched.stderr.strip().splitlines()[-5:])
            print(
                "warning: .wheelhouse/ is incomplete and could not be filled from the package "
                "registry: the tests that install environments offline will fail. Run `python3 "
                f"dev.py test` again once the registry is reachable. pip said:\n{tail}",
                file=sys.stderr,
                flush=True,
            )


def run(command: list[str]) -> int:
    """Run ``command`` in the checkout, showing it first as a shell line."""
    shown = [".venv/bin/python" if part == sys.executable else part for part in command]
    print("+ " + " ".join(shown), flush=True)
    return subprocess.run(command, cwd=HERE).returncode


def test(args: list[str]) -> int:
    ensure_system_packages(TEST_NEEDS)
    # uv for the tests of uv-built environments; the build backend to build deploytools'
    # wheel without build isolation (offline)
    in_venv("[test]", "uv", *pyproject()["build-system"]["requires"])
    fill_wheelhouse()
    for check in (["check", "."], ["format", "--check", "."]):
        if code := run([sys.executable, "-m", "ruff", *check]):
            return code
    return run([sys.executable, "-m", "pytest", *args])


def demo(args: list[str]) -> int:
    ensure_system_packages(DEMO_NEEDS)
    in_venv("")
    import json
    import socket
    import sqlite3
    import time

    import redis

    root = DEMO / "app"
    (DEMO / "redis").mkdir(parents=True, exist_ok=True)
    config = DEMO / "invoke.yaml"
    config.write_text(
        json.dumps({"deploy": {"hosts": ["local"], "root": str(root), "repo": str(HERE)}})
    )

    def invoke(*task: str) -> None:
        print(f"\n$ invoke -f .demo/invoke.yaml {' '.join(task)}", flush=True)
        subprocess.run(
            [sys.executable, "-m", "invoke", "-f", str(config), *task], cwd=HERE, check=True
        )

    # a throwaway Redis, its data kept in .demo/redis between runs of the demo
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = subprocess.Popen(
        [
            "redis-server",
            "--port",
            str(port),
            "--bind",
            "127.0.0.1",
            "--dir",
            str(DEMO / "redis"),
            "--dbfilename",
            "demo.rdb",
            "--save",
            "",
            "--appendonly",
            "no",
        ],
        stdout=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port, decode_responses=True)
    try:
        for _ in range(200):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.02)
        invoke("setup")
        # production secrets live in the host's shared/.env, not on the laptop
        (root / "shared" / ".env").write_text(f"REDIS_URL=redis://127.0.0.1:{port}/0\n")
        # the article's table, in the embedded SQLite ledger database
        with sqlite3.connect(root / "shared" / "datamig.sqlite3") as db:
            db.execute(
                "CREATE TABLE IF NOT EXISTS feature_flags (name TEXT PRIMARY KEY, enabled BOOLEAN)"
            )
            db.executemany(
                "INSERT OR IGNORE INTO feature_flags VALUES (?, ?)",
                [("2fa_sms", True), ("notifications_beta", False), ("pagination", True)],
            )
        invoke("deploy")
        invoke("datamig.status")
        print("\nfeature flags read back from Redis (hash feature_flags):")
        for name, value in sorted(client.hgetall("feature_flags").items()):
            print(f"  {name:<20} {'on' if value == '1' else 'off'}")
        print(f"\nreleases are in {root}; run the demo again: the second deploy applies nothing.")
        return 0
    finally:
        with contextlib.suppress(redis.RedisError):
            client.shutdown(save=True)
        server.wait(10)


def main() -> int:
    commands = {"demo": demo, "test": test}
    if len(sys.argv) < 2 or sys.argv[1] not in commands:
        print(__doc__)
        return 2
    return commands[sys.argv[1]](sys.argv[2:])


if __name__ == "__main__":
    sys.exit(main())
