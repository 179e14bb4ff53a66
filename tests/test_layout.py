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
