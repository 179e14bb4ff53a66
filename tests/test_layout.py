"""The remote scripts: every value reaches the shell as data, never as code."""

import subprocess

import pytest

from deploytools.layout import HostState, Script, shared_link_target

NASTY = [
    "plain",
    "with space",
    "it's",
    'say "hi"',
    "$(touch /tmp/deploytools-pwned)",
    "`touch /tmp/deploytools-pwned`",
    "a;b|c&d>e<f",
    "$HOME ${IFS} \\n \\",
    "-n",
    "ünï©ødé",
]


def run(script: str, home: str = "/home/someone") -> subprocess.CompletedProcess:
    return subprocess.run(
        ["sh", "-c", script],
        capture_output=True,
        text=True,
        env={"HOME": home, "PATH": "/usr/bin:/bin"},
    )


@pytest.mark.parametrize("value", NASTY)
def test_call_arguments_arrive_verbatim(value, tmp_path):
    completed = run(Script(str(tmp_path)).call("emit", "value", value).text())
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout == f"value\t{value}\n"
    assert not (tmp_path / "deploytools-pwned").exists()


@pytest.mark.parametrize(
    ("root", "expected"),
    [
        ("/srv/my app", "/srv/my app"),
        ("~", "/home/someone"),
        ("~/apps/it's", "/home/someone/apps/it's"),
        ("relative/app", "./relative/app"),
        ("-n", "./-n"),
    ],
)
def test_root_forms(root, expected):
    completed = run(Script(root).call("emit", "root", "x").text() + 'printf "%s" "$root"\n')
    assert completed.stdout.endswith(expected)


def test_failing_script_runs_its_undo_and_keeps_its_exit_code(tmp_path):
    marker = tmp_path / "undone"
    script = Script(str(tmp_path)).text() + f"undo 'touch {marker}'\nfail 66 'no way'\n"
    completed = run(script)
    assert completed.returncode == 66 and completed.stderr == "no way\n"
    assert marker.exists()


def test_succeeding_script_does_not_undo(tmp_path):
    marker = tmp_path / "undone"
    completed = run(Script(str(tmp_path)).text() + f"undo 'touch {marker}'\n")
    assert completed.returncode == 0 and not marker.exists()


def test_shared_links_are_relative_to_the_release():
    assert shared_link_target(".env") == "../../shared/.env"
    assert shared_link_target("storage/uploads") == "../../../shared/storage/uploads"


def test_state_parsing_tolerates_a_lock_without_owner():
    state = HostState.parse("root\t/srv/app\ncurrent\treleases/20260101000000-abc1234\nlock\t\n")
    assert state.root == "/srv/app" and state.current == "20260101000000-abc1234"
    assert state.locked and state.lock is None


def test_the_shell_library_parses_in_every_posix_shell_here():
    import shutil

    from deploytools.layout import library

    shells = [s for s in ("sh", "dash", "bash", "busybox") if shutil.which(s)]
    for shell in shells:
        argv = [shell, "sh", "-n"] if shell == "busybox" else [shell, "-n"]
        completed = subprocess.run([*argv], input=library(), capture_output=True, text=True)
        assert completed.returncode == 0, (shell, completed.stderr)
    if shutil.which("shellcheck"):
        completed = subprocess.run(
            ["shellcheck", "-s", "sh", "-e", "SC2034,SC2154,SC2016,SC2086", "-"],
            input=library(),
            capture_output=True,
            text=True,
        )
        assert completed.returncode == 0, completed.stdout


ENV_FILE = """\
# production secrets
DATABASE_URL=postgresql+psycopg://app:s3cret@db/app
export REDIS_URL="redis://cache:6379/0"
QUOTED='single # not a comment'
INJECTED=$(touch {marker})
  SPACED = padded
ALREADY=from-the-file
not a line
"""


def test_hooks_read_shared_env_like_the_runner_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    env_file = tmp_path / ".env"
    env_file.write_text(ENV_FILE.format(marker=marker))
    script = (
        Script(str(tmp_path)).text()
        + f"ALREADY=kept; export ALREADY; load_env_file '{env_file}'\n"
        + "for k in DATABASE_URL REDIS_URL QUOTED INJECTED SPACED ALREADY; do\n"
        + '  eval "printf \'%s=%s\\n\' $k \\"\\${$k-unset}\\""; done\n'
    )
    completed = run(script)
    assert completed.returncode == 0, completed.stderr
    values = dict(line.split("=", 1) for line in completed.stdout.splitlines())
    assert values["DATABASE_URL"] == "postgresql+psycopg://app:s3cret@db/app"
    assert values["REDIS_URL"] == "redis://cache:6379/0"
    assert values["QUOTED"] == "single # not a comment"
    assert values["INJECTED"] == f"$(touch {marker})"
    assert values["SPACED"] == "padded"
    assert values["ALREADY"] == "kept"  # a variable already set wins
    assert not marker.exists()
