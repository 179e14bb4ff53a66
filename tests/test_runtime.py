"""The runtime half of a deploy on real sshd hosts: the release's environment per lock file,
hooks, restart and health in batches, and a real server process that serves the new code
after a deploy and the old code again after a failure or a rollback."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import urllib.request
from pathlib import Path

import pytest

from deploytools.deploy import deploy
from deploytools.exceptions import HostError, UsageError

SERVER = '''"""The application: answers every GET with its release's REVISION."""
import http.server
import os
import pathlib

import tinyapp_dep  # from the release's environment

REVISION = pathlib.Path("REVISION").read_text().strip()


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = f"{REVISION} {tinyapp_dep.VERSION}".encode()
        self.send_response(200)
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


http.server.HTTPServer(("127.0.0.1", int(os.environ["PORT"])), Handler).serve_forever()
'''

RESTART = """#!/bin/sh
# stop the server of the previous release (pidfile in shared/), start this one's
set -e
pidfile="$DEPLOY_SHARED/server.pid"
if [ -f "$pidfile" ]; then
  pid=$(cat "$pidfile")
  if kill "$pid" 2>/dev/null; then
    while kill -0 "$pid" 2>/dev/null; do sleep 0.05; done
  fi
fi
nohup python server.py </dev/null >>"$DEPLOY_SHARED/server.log" 2>&1 &
echo $! > "$pidfile"
echo "started $DEPLOY_RELEASE as $(cat "$pidfile")"
"""

HEALTH = (
    'python -c "import os, urllib.request; '
    "urllib.request.urlopen('http://127.0.0.1:%s/' % os.environ['PORT'], timeout=2)\""
)


def served(port: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5) as response:
        return response.read().decode()


@pytest.fixture
def web(ssh_fleet, wheelhouse, tmp_path):
    """The fleet deploying a small web app whose dependency comes from its lock file, with a
    `restart` that (re)starts its server and a `health` that asks it."""
    from servers import free_port

    ports = {}
    for name, root in ssh_fleet.roots.items():
        ports[name] = free_port()
        (root / "shared" / ".env").write_text(f"PORT={ports[name]}\n")
    ssh_fleet.repo.commit(
        {
            "requirements.txt": "tinyapp-dep==1.0\n",
            "server.py": SERVER,
            "bin/restart": RESTART,
        },
        "the web app",
    )
    ssh_fleet.ports = ports
    ssh_fleet.runtime = {
        "install_args": ["--no-index", "--find-links", str(wheelhouse)],
        "restart": ["sh bin/restart"],
        "health": [HEALTH],
        "health_timeout": 5,
    }
    yield ssh_fleet
    for root in ssh_fleet.roots.values():
        pidfile = root / "shared" / "server.pid"
        if pidfile.exists():
            with contextlib.suppress(ProcessLookupError, ValueError):
                os.kill(int(pidfile.read_text()), signal.SIGTERM)


@pytest.fixture
def uv_on_hosts(host_path_bin):
    """uv where the test hosts' sessions find it (the suite puts it first on their PATH)."""
    if not (host_path_bin / "uv").exists():
        pytest.skip("uv is not installed in the test environment (python3 dev.py test does)")


def env_dirs(root: Path) -> list[Path]:
    venvs = root / "shared" / "venvs"
    return sorted(p for p in venvs.iterdir() if p.is_dir()) if venvs.exists() else []


def test_a_real_server_serves_the_new_code_and_the_old_code_after_a_failure(web):
    first = deploy(web.settings(**web.runtime))
    sha1 = web.repo.git("rev-parse", "HEAD")
    assert {served(port) for port in web.ports.values()} == {f"{sha1} 1.0"}

    # a release whose server crashes at start: health fails, every host goes back and the
    # old release is restarted, so it serves again
    web.repo.commit({"server.py": "raise SystemExit('broken release')\n"}, "broken")
    completed = web.invoke("deploy", "--json", **web.runtime)
    assert completed.returncode == 1, completed.stderr
    report = json.loads(completed.stdout)
    assert report["status"] == "rolled_back"
    assert "health check" in report["error"]
    assert set(web.currents().values()) == {first.release}
    assert {served(port) for port in web.ports.values()} == {f"{sha1} 1.0"}

    web.repo.commit({"server.py": SERVER + "\n# fixed\n"}, "fixed")
    third = deploy(web.settings(**web.runtime))
    sha3 = web.repo.git("rev-parse", "HEAD")
    assert {served(port) for port in web.ports.values()} == {f"{sha3} 1.0"}

    # rollback goes to the last good release (the broken one is never a target) and
    # restarts it
    back = web.invoke("rollback", **web.runtime)
    assert back.returncode == 0, back.stderr
    assert set(web.currents().values()) == {first.release}
    assert {served(port) for port in web.ports.values()} == {f"{sha1} 1.0"}
    assert third.release in web.releases(web.names[0])


def test_the_environment_is_built_once_per_lock_file_and_its_scripts_work(web, tmp_path):
    marker = tmp_path / "hello"
    hook = {"before_switch": [f"tinyapp-hello > {marker}; echo PATH=$PATH; echo env=$VIRTUAL_ENV"]}
    completed = web.invoke("deploy", "--json", **web.runtime, **hook)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert "hello from tinyapp_dep 1.0" in marker.read_text()
    root = web.root(web.names[0])
    release = root / "releases" / report["release"]
    assert os.readlink(release / ".venv").startswith("../../shared/venvs/")
    (env,) = env_dirs(root)
    assert (env / ".complete").exists()
    assert (release / ".venv").resolve() == env.resolve()
    before = (env.stat().st_ino, (env / ".complete").stat().st_mtime_ns)
    assert "building the environment" in completed.stderr + completed.stdout
    assert {h["environment"] for h in report["hosts"]} == {"built"}

    # the same lock file: no installer runs, the same environment is linked
    web.repo.bump()
    completed = web.invoke("deploy", "--json", **web.runtime, **hook)
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert {h["environment"] for h in report["hosts"]} == {"reused"}
    assert "building the environment" not in completed.stderr + completed.stdout
    assert "Successfully installed" not in completed.stderr + completed.stdout
    assert env_dirs(root) == [env]
    assert (env.stat().st_ino, (env / ".complete").stat().st_mtime_ns) == before
    assert "environment" in report["phases"]  # a few ms: nothing to install

    # a changed lock file builds a new environment ...
    web.repo.commit({"requirements.txt": "tinyapp-dep==2.0\n"}, "upgrade")
    completed = web.invoke("deploy", "--json", **web.runtime, **hook)
    assert completed.returncode == 0, completed.stderr
    assert "hello from tinyapp_dep 2.0" in marker.read_text()
    assert len(env_dirs(root)) == 2
    assert {served(port) for port in web.ports.values()} == {
        f"{web.repo.git('rev-parse', 'HEAD')} 2.0"
    }
    # ... and once no kept release links to the old one (current and its rollback target
    # are always kept), cleanup removes it
    web.repo.bump()
    completed = web.invoke("deploy", keep_releases=1, **web.runtime, **hook)
    assert completed.returncode == 0, completed.stderr
    (kept,) = env_dirs(root)
    assert kept != env


def test_a_broken_requirement_fails_before_the_switch_with_the_installer_output(web):
    first = deploy(web.settings(**web.runtime))
    web.repo.commit({"requirements.txt": "tinyapp-dep==9.9\n"}, "no such version")
    before = web.snapshot()
    completed = web.invoke("deploy", **web.runtime)
    assert completed.returncode == 1, completed.stderr
    assert "tinyapp-dep==9.9" in completed.stderr
    assert "requirements.txt" in completed.stderr
    assert set(web.currents().values()) == {first.release}
    assert web.snapshot() == before  # the new release is gone, the locks released


def test_a_lock_file_installing_the_release_itself_is_refused(web):
    web.repo.commit({"requirements.txt": "tinyapp-dep==1.0\n-e .\n"}, "editable")
    before = web.snapshot()
    with pytest.raises(UsageError, match=r"requirements.txt:2 installs the release itself"):
        deploy(web.settings(**web.runtime))
    assert web.snapshot() == before


def test_uv_builds_the_environment_when_asked(web, uv_on_hosts):
    settings = {**web.runtime, "installer": "uv"}
    completed = web.invoke("deploy", "--json", **settings)
    assert completed.returncode == 0, completed.stderr
    root = web.root(web.names[0])
    (env,) = env_dirs(root)
    assert (env / "pyvenv.cfg").read_text().count("uv") >= 1
    sha = web.repo.git("rev-parse", "HEAD")
    assert {served(port) for port in web.ports.values()} == {f"{sha} 1.0"}


def test_hooks_stream_with_a_host_prefix_and_a_failing_hook_switches_nothing(web):
    first = deploy(web.settings(**web.runtime))
    web.repo.bump()
    hooks = {
        "before_switch": [
            "echo checking $DEPLOY_RELEASE",
            "echo password is postgresql://app:s3cret-pw@db/app >&2; exit 3",
        ]
    }
    before = web.snapshot()
    completed = web.invoke("deploy", "--json", **web.runtime, **hooks)
    assert completed.returncode == 1
    assert set(web.currents().values()) == {first.release}
    assert web.snapshot() == before
    for name in web.names:  # streamed live, one prefixed line per host (stdout is a pipe)
        assert f"{name} | checking " in completed.stderr
    assert "s3cret-pw" not in completed.stderr + completed.stdout
    report = json.loads(completed.stdout)
    assert "before_switch" in report["error"] and "exit" in report["error"]
    statuses = {(h["hook"], h["exit_status"]) for host in report["hosts"] for h in host["hooks"]}
    assert ("before_switch#1", 0) in statuses and ("before_switch#2", 3) in statuses


def test_restart_runs_batch_after_batch_with_health_in_between(web, tmp_path):
    log = tmp_path / "restarts.log"
    log.touch()
    log.chmod(0o666)
    runtime = {
        **web.runtime,
        "restart": [
            f"echo start $DEPLOY_ROOT >> {log}; sh bin/restart; sleep 0.3; echo end >> {log}"
        ],
        "restart_batch": 1,
    }
    completed = web.invoke("deploy", **runtime)
    assert completed.returncode == 0, completed.stderr
    lines = log.read_text().split("\n")
    events = [line.split()[0] for line in lines if line]
    assert events == ["start", "end"] * len(web.names)  # never two hosts at once


def test_a_daemon_holding_the_channel_is_named(web):
    runtime = {**web.runtime, "restart": ["python server.py &"], "health": []}
    completed = web.invoke("deploy", **runtime)
    assert completed.returncode == 1, completed.stderr
    assert "server.py" in completed.stderr
    assert "holding its output" in completed.stderr
    assert all(current is None for current in web.currents().values())
    for root in web.roots.values():  # the daemons this test started
        subprocess.run(["pkill", "-f", f"{root}.*server.py"], check=False)
    subprocess.run(["pkill", "-f", "python server.py"], check=False)


def test_invoke_restart_restarts_and_fails_naming_the_hosts(web):
    deploy(web.settings(**web.runtime))
    pids = {n: (r / "shared" / "server.pid").read_text() for n, r in web.roots.items()}
    completed = web.invoke("restart", **web.runtime)
    assert completed.returncode == 0, completed.stderr
    assert all((r / "shared" / "server.pid").read_text() != pids[n] for n, r in web.roots.items())
    failing = {**web.runtime, "health": ["exit 1"], "health_timeout": 1}
    completed = web.invoke("restart", **failing)
    assert completed.returncode == 1
    assert "health check `exit 1` did not pass" in completed.stderr
    assert not any(web.locked(h) for h in web.names)


def test_a_restart_failing_for_the_old_release_too_is_exit_4_naming_the_hosts(web):
    """Restart fails on the new release, every host switches back, and restarting the old one
    fails as well: nobody can say what serves, so exit 4 names the hosts."""
    first = deploy(web.settings(**web.runtime))
    web.repo.bump()
    completed = web.invoke("deploy", **{**web.runtime, "restart": ["exit 1"]})
    assert completed.returncode == 4, completed.stderr
    assert all(name in completed.stderr for name in web.names)
    assert "restart" in completed.stderr
    assert set(web.currents().values()) == {first.release}  # switched back everywhere


def test_a_rollback_whose_health_check_fails_is_exit_4_naming_the_hosts(web):
    first = deploy(web.settings(**web.runtime))
    web.repo.bump()
    deploy(web.settings(**web.runtime))
    failing = {**web.runtime, "health": ["exit 1"], "health_timeout": 1}
    completed = web.invoke("rollback", **failing)
    assert completed.returncode == 4, completed.stderr
    assert all(name in completed.stderr for name in web.names)
    assert "health check `exit 1` did not pass" in completed.stderr
    assert "invoke restart" in completed.stderr
    assert set(web.currents().values()) == {first.release}  # never a split fleet


def test_health_cmd_is_read_as_health(web):
    runtime = {**web.runtime, "health_timeout": 1}
    runtime.pop("health")
    completed = web.invoke("deploy", "--json", health_cmd="exit 1", **runtime)
    assert completed.returncode == 1
    assert "health check `exit 1`" in json.loads(completed.stdout)["error"]


def test_a_runner_speaking_another_protocol_is_refused_in_the_check_step(ssh_fleet, tmp_path):
    ssh_fleet.repo.commit(
        {"migrations/202601010000_noop.py": '"""No-op."""\n\n\ndef run(ctx):\n    pass\n'}
    )
    for spoken, side in ((99, "on this machine"), (0, "on the hosts")):
        fake = tmp_path / f"python{spoken}"
        fake.write_text(
            "#!/bin/sh\n"
            f'echo \'{{"protocol": {spoken}, "ledger": "x", "ledger_id": null, '
            '"pending": [], "warnings": []}\'\n'
        )
        fake.chmod(0o755)
        before = ssh_fleet.snapshot()
        with pytest.raises(UsageError) as caught:
            deploy(with_python(ssh_fleet, fake))
        message = str(caught.value)
        assert f"protocol {spoken}" in message and "speaks 2 and 1" in message
        assert side in message
        assert ssh_fleet.snapshot() == before
    accepted = tmp_path / "python1"
    accepted.write_text(
        '#!/bin/sh\necho \'{"protocol": 1, "ledger": "x", "ledger_id": null, '
        '"pending": [], "warnings": []}\'\n'
    )
    accepted.chmod(0o755)
    deploy(with_python(ssh_fleet, accepted))  # the previous protocol is spoken


def with_python(fleet, python: Path):
    """The fleet's settings with every host's deploy.python set to ``python``."""
    from deploytools.config import load_settings

    config = fleet.config()
    config["deploy"]["hosts"] = [{**entry, "python": str(python)} for entry in fleet.entries]
    return load_settings(config)


def test_time_spent_is_reported_per_phase(web):
    completed = web.invoke("deploy", "--json", **web.runtime)
    report = json.loads(completed.stdout)
    for phase in ("build", "preflight", "upload", "environment", "switch", "restart", "finish"):
        assert phase in report["phases"], phase
    for host in report["hosts"]:
        assert host["commands"] >= 5 and host["connections"] == 1
        assert {h["hook"] for h in host["hooks"]} >= {"restart#1", "health"}


def test_a_hook_past_the_command_timeout_is_cut_off_and_nothing_switches(web):
    runtime = {**web.runtime, "before_switch": ["sleep 30"], "command_timeout": 2}
    with pytest.raises(HostError, match="time limit"):
        deploy(web.settings(**runtime))
    assert all(current is None for current in web.currents().values())
    assert not any(web.locked(h) for h in web.names)


USES_THE_ENVIRONMENT = '''"""Needs a package only the release's lock file provides."""
import sys

import sqlalchemy as sa
import tinyapp_dep


def run(ctx):
    ctx.db.execute(sa.text("CREATE TABLE runner (python text, dep text)"))
    ctx.db.execute(
        sa.text("INSERT INTO runner VALUES (:p, :d)"),
        {"p": sys.executable, "d": tinyapp_dep.VERSION},
    )
'''


def test_deploytools_on_the_hosts_comes_from_the_apps_own_lock_file(ssh_fleet, wheelhouse, pg_url):
    """The demo app lists deploytools (a local wheel) with its dependencies: the hosts run
    the runner from the release's environment, and a migration imports a package that only
    the lock file brings."""
    import sqlalchemy as sa

    for root in ssh_fleet.roots.values():
        (root / "shared" / ".env").write_text(f"DATABASE_URL={pg_url}\n")
    ssh_fleet.repo.commit(
        {
            "requirements.txt": "deploytools\ntinyapp-dep==1.0\n",
            "migrations/202601010000_uses_the_environment.py": USES_THE_ENVIRONMENT,
        }
    )
    # deploy.python points nowhere: with an environment the runner is .venv/bin/python
    entries = [{**entry, "python": "/nonexistent/python3"} for entry in ssh_fleet.entries]
    completed = ssh_fleet.invoke(
        "deploy",
        "--json",
        hosts=entries,
        install_args=["--no-index", "--find-links", str(wheelhouse)],
        installer="pip",
    )
    assert completed.returncode == 0, completed.stderr
    assert "deploy.python" in completed.stderr and "ignored" in completed.stderr
    report = json.loads(completed.stdout)
    assert [m["name"] for m in report["migrations"]["applied"]] == ["uses_the_environment"]
    engine = sa.create_engine(pg_url)
    with engine.connect() as db:
        ((python, dep),) = db.execute(sa.text("SELECT python, dep FROM runner")).all()
    engine.dispose()
    migration_root = ssh_fleet.root(ssh_fleet.names[0])
    assert python.startswith(str(migration_root / "releases" / report["release"] / ".venv"))
    assert dep == "1.0"
    env = (migration_root / "releases" / report["release"] / ".venv").resolve()
    installed = {
        p.name.split("-")[0].lower()
        for p in (env / "lib").glob("python*/site-packages/*.dist-info")
    }
    assert {"deploytools", "fabric", "sqlalchemy", "psycopg", "tinyapp_dep"} <= installed


def test_build_runs_in_a_clean_export_and_its_outputs_ship(ssh_fleet):
    (ssh_fleet.repo.path / "scratch.txt").write_text("not committed: never in the release\n")
    build = [
        "test ! -e scratch.txt",  # a clean export of the ref, not the work tree
        "mkdir -p static && echo 'body{}' > static/app.css && git rev-parse HEAD 2>/dev/null "
        "> static/built-from-git || echo export > static/built-from-git",
    ]
    completed = ssh_fleet.invoke("deploy", "--json", build=build)
    assert completed.returncode == 0, completed.stderr
    release = json.loads(completed.stdout)["release"]
    for root in ssh_fleet.roots.values():
        static = root / "releases" / release / "static"
        assert (static / "app.css").read_text() == "body{}\n"
        assert (static / "built-from-git").read_text() == "export\n"
    assert not (ssh_fleet.repo.path / "static").exists()  # the work tree is untouched
    assert "build | $ mkdir -p static" in completed.stderr
    failing = ssh_fleet.invoke("deploy", build=["echo compiling; exit 7"])
    assert failing.returncode == 2
    assert "build command `echo compiling; exit 7` exited 7" in failing.stderr


def test_limit_leaving_out_the_migration_host_still_migrates_there(ssh_fleet, pg_url):
    import sqlalchemy as sa

    for root in ssh_fleet.roots.values():
        (root / "shared" / ".env").write_text(f"DATABASE_URL={pg_url}\n")
    first = deploy(ssh_fleet.settings())
    ssh_fleet.repo.commit(
        {"migrations/202601010000_noop.py": '"""No-op."""\n\n\ndef run(ctx):\n    pass\n'}
    )
    migration_host, *others = ssh_fleet.names
    completed = ssh_fleet.invoke("deploy", "--json", "--hosts", ",".join(others))
    assert completed.returncode == 0, completed.stderr
    report = json.loads(completed.stdout)
    assert "only" in completed.stderr and migration_host in completed.stderr  # split warned
    assert ssh_fleet.current(migration_host) == first.release  # not switched ...
    assert all(ssh_fleet.current(h) == report["release"] for h in others)
    assert report["release"] in ssh_fleet.releases(migration_host)  # ... but migrated there
    engine = sa.create_engine(pg_url)
    with engine.connect() as db:
        rows = db.execute(sa.text("SELECT version, release FROM data_migrations")).all()
    engine.dispose()
    assert rows == [("202601010000", report["release"])]
    assert not any(ssh_fleet.locked(h) for h in ssh_fleet.names)


def test_hooks_never_show_the_secrets_of_shared_env(ssh_fleet):
    token = "tok_9f8e7d6c5b4a"
    password = "pw-Zq81!x"
    for root in ssh_fleet.roots.values():
        (root / "shared" / ".env").write_text(
            f"API_TOKEN={token}\nCACHE_URL=redis://app:{password}@cache:6379/0\nPLAIN=visible\n"
        )
    hook = 'echo "token=$API_TOKEN url=$CACHE_URL plain=$PLAIN"; exit 3'
    completed = ssh_fleet.invoke("deploy", "--json", before_switch=[hook])
    assert completed.returncode == 1
    everything = completed.stdout + completed.stderr
    assert "plain=visible" in everything  # output still streams ...
    assert token not in everything and password not in everything  # ... masked
    assert "\x1e" not in everything  # the announcements themselves are never shown
    report = json.loads(completed.stdout)
    assert token not in report["error"] and "***" in report["error"]
