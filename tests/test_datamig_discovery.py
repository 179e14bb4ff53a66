"""Migration file names, ordering, loading, the env file and the ``new`` template: no servers."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest

from deploytools.datamig.discovery import (
    MigrationFile,
    check_migration_names,
    check_phase,
    defines_revert,
    discover,
    load_module,
    pad_version,
    source_phase,
)
from deploytools.datamig.envfile import load_env_file, parse_env_file
from deploytools.datamig.new import new_migration
from deploytools.exceptions import MigrationFileError, UsageError


def test_versions_sort_after_padding_and_keep_their_digits():
    names = [
        "202001010001_c.py",
        "20200101000059_b.py",
        "201912312359_a.py",
        "20200101000000_first_of_2020.py",
    ]
    migrations = check_migration_names(names)
    assert [m.version for m in migrations] == [
        "201912312359",
        "20200101000000",
        "20200101000059",
        "202001010001",
    ]
    assert [m.sort_key for m in migrations] == [
        "20191231235900",
        "20200101000000",
        "20200101000059",
        "20200101000100",
    ]
    assert migrations[0] == MigrationFile("201912312359", "a", "201912312359_a.py")
    assert migrations[0].checksum is None


def test_twelve_and_fourteen_digit_forms_of_one_version_are_duplicates():
    with pytest.raises(MigrationFileError) as error:
        check_migration_names(["202001010000_one.py", "20200101000000_two.py"])
    assert "202001010000_one.py" in str(error.value)
    assert "20200101000000_two.py" in str(error.value)
    assert "duplicate" in str(error.value)


@pytest.mark.parametrize(
    "name",
    [
        "2020010100_ten_digits.py",
        "2020010100000_thirteen.py",
        "202001010000-dash.py",
        "202001010000_CamelCase.py",
        "202001010000_.py",
        "202001010000_double__underscore.py",
        "202001010000_trailing_.py",
        "202001010000_9starts_with_digit.py",
        "helpers.py",
        "202001010000_x.PY.py",
    ],
)
def test_malformed_names_are_named_in_the_error(name):
    with pytest.raises(MigrationFileError) as error:
        check_migration_names(["202001010000_fine.py", name])
    assert repr(name) in str(error.value)
    assert "snake_case" in str(error.value)


def test_non_python_files_and_package_marker_are_ignored():
    names = ["__init__.py", "README.md", "202001010000_ok.py", "notes.txt", "x.pyc"]
    assert [m.filename for m in check_migration_names(names)] == ["202001010000_ok.py"]


def test_discover_checksums_and_ignores_folders(tmp_path):
    assert discover(tmp_path / "does-not-exist") == []
    (tmp_path / "__pycache__").mkdir()
    (tmp_path / "__pycache__" / "junk.py").write_text("")
    (tmp_path / "__init__.py").write_text("")
    first = tmp_path / "202001010000_first.py"
    first.write_bytes(b"def run(ctx):\n    pass\n")
    (tmp_path / "20191231000000_zero.py").write_bytes(b"def run(ctx): pass\n")

    migrations = discover(tmp_path)

    assert [m.filename for m in migrations] == ["20191231000000_zero.py", "202001010000_first.py"]
    assert migrations[1].checksum == hashlib.sha256(first.read_bytes()).hexdigest()
    assert migrations[1].path == first


def test_discover_reports_bad_names_and_a_file_as_folder(tmp_path):
    (tmp_path / "202001010000_Bad.py").write_text("")
    with pytest.raises(MigrationFileError, match=r"202001010000_Bad\.py"):
        discover(tmp_path)
    (tmp_path / "file").write_text("")
    with pytest.raises(MigrationFileError, match="not a folder"):
        discover(tmp_path / "file")


def test_discovery_imports_only_the_standard_library():
    code = (
        "import sys\n"
        "from deploytools.datamig.discovery import check_migration_names\n"
        "import deploytools.datamig, deploytools.redact\n"
        "check_migration_names(['202001010000_x.py'])\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "{'sqlalchemy', 'redis', 'rich', 'psycopg'})\n"
        "print(heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def _migration(folder: Path, filename: str, body: str) -> MigrationFile:
    path = folder / filename
    path.write_text(body)
    return next(m for m in discover(folder) if m.filename == filename)


def test_load_module_writes_no_bytecode_and_needs_run(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "dont_write_bytecode", False)  # as without PYTHONDONTWRITEBYTECODE
    lib = tmp_path / "lib"  # the release's own code, imported by a migration
    lib.mkdir()
    (lib / "helper_for_migration.py").write_text("VALUE = 42\n")
    sys.path.insert(0, str(lib))
    try:
        migration = _migration(
            tmp_path,
            "202001010000_ok.py",
            '"""Doc."""\nimport helper_for_migration\n\ndef run(ctx):\n    return 1\n',
        )
        module = load_module(migration)
    finally:
        sys.path.remove(str(lib))
        sys.modules.pop("helper_for_migration", None)
    assert module.run(None) == 1 and module.__doc__ == "Doc."
    assert module.__file__ == str(tmp_path / "202001010000_ok.py")
    assert not list(tmp_path.rglob("__pycache__"))
    assert sys.dont_write_bytecode is False  # restored

    no_run = _migration(tmp_path, "202001010001_no_run.py", "run = 'not callable'\n")
    with pytest.raises(MigrationFileError, match=r"202001010001_no_run\.py has no run\(ctx\)"):
        load_module(no_run)
    syntax = _migration(tmp_path, "202001010002_syntax.py", "x = 1\ndef run(ctx)\n")
    with pytest.raises(MigrationFileError, match=r"202001010002_syntax\.py.*line 2"):
        load_module(syntax)
    raises = _migration(tmp_path, "202001010003_raises.py", "x = 1\n1 / 0\n")
    with pytest.raises(MigrationFileError, match=r"raises\.py fails to import \(line 2\).*Zero"):
        load_module(raises)


def test_defines_revert_reads_the_syntax_tree_without_importing(tmp_path):
    marker = tmp_path / "imported"
    with_revert = _migration(
        tmp_path,
        "202001010000_a.py",
        f"open({str(marker)!r}, 'w')\ndef run(ctx): pass\ndef revert(ctx): pass\n",
    )
    without = _migration(tmp_path, "202001010001_b.py", "def run(ctx): pass\n")
    assigned = _migration(tmp_path, "202001010002_c.py", "def run(ctx): pass\nrevert = run\n")
    assert defines_revert(with_revert) and defines_revert(assigned)
    assert not defines_revert(without)
    assert not marker.exists()


def test_pad_version():
    assert pad_version("202002111319") == "20200211131900"
    assert pad_version("20200211131959") == "20200211131959"


# --------------------------------------------------------------------------- env file


def test_env_file_parsing():
    text = (
        "# secrets\n"
        "\n"
        "export DATABASE_URL='postgresql://u:p w@h/db'\n"
        'REDIS_URL="redis://:x@h/0"  # trailing comment\n'
        "PLAIN=value with spaces # comment\n"
        'ESCAPED="a \\"quoted\\" word\\n"\n'
        "EMPTY=\n"
        "HASH=abc#def\n"
    )
    assert parse_env_file(text) == {
        "DATABASE_URL": "postgresql://u:p w@h/db",
        "REDIS_URL": "redis://:x@h/0",
        "PLAIN": "value with spaces",
        "ESCAPED": 'a "quoted" word\n',
        "EMPTY": "",
        "HASH": "abc#def",
    }


@pytest.mark.parametrize("line", ["no equals sign here", "1BAD=x", "K='unterminated"])
def test_env_file_malformed_lines_are_named_without_their_content(line):
    with pytest.raises(UsageError) as error:
        parse_env_file(f"OK=1\n{line}\n", "shared/.env")
    assert "shared/.env:2" in str(error.value)
    assert line not in str(error.value)


def test_env_file_never_overrides_and_may_be_missing(tmp_path):
    env_file = tmp_path / ".env"
    env_file.write_text("A=from-file\nB=from-file\n")
    environ = {"A": "already-set"}
    assert load_env_file(env_file, environ) == {"B": "from-file"}
    assert environ == {"A": "already-set", "B": "from-file"}
    assert load_env_file(tmp_path / "missing.env", environ) == {}


# --------------------------------------------------------------------------- new


def test_new_migration_from_the_template(tmp_path):
    now = datetime(2020, 2, 11, 14, 19, 5, tzinfo=timezone(timedelta(hours=1)))
    path = new_migration(tmp_path / "migrations", "migrate_flags_to_redis", now=now)
    assert path.name == "20200211131905_migrate_flags_to_redis.py"  # UTC
    text = path.read_text()
    assert text.startswith('"""Migrate flags to redis.')
    assert "def run(ctx):" in text and "# def revert(ctx):" in text
    compile(text, str(path), "exec")
    assert [(m.version, m.phase) for m in discover(path.parent)] == [
        ("20200211131905", "after_switch")
    ]
    module = load_module(discover(path.parent)[0])
    assert module.phase == "after_switch"
    with pytest.raises(NotImplementedError):
        module.run(None)


def test_new_migration_refuses_bad_names_and_taken_versions(tmp_path):
    now = datetime(2021, 1, 1, 0, 0, 0, tzinfo=UTC)
    for bad in ("CamelCase", "with-dash", "two__underscores", "", "9lives"):
        with pytest.raises(UsageError, match="snake_case"):
            new_migration(tmp_path, bad, now=now)
    (tmp_path / "202101010000_older_form.py").write_text("def run(ctx): pass\n")
    with pytest.raises(UsageError, match=r"202101010000_older_form\.py"):
        new_migration(tmp_path, "another", now=now)
    assert new_migration(tmp_path, "another", now=now + timedelta(seconds=1)).exists()


@pytest.mark.parametrize(
    ("source", "phase"),
    [
        ("def run(ctx):\n    pass\n", "after_switch"),
        ("phase = 'before_switch'\n", "before_switch"),
        ('"""Doc."""\nphase: str = "after_restart"  # contract\n', "after_restart"),
        ("phase = 'typo'\n", "typo"),  # read as written; check_phase refuses it
        ("phase = 'before_' + 'switch'\n", None),  # not a literal
        ("def run(ctx):\n    phase = 'before_switch'\n", "after_switch"),  # not top level
        ("phase_of_moon = 3\n", "after_switch"),
        ("phase = 'before_switch'\nphase = 'after_restart'\n", "after_restart"),
    ],
)
def test_the_phase_is_read_from_the_source(source, phase):
    assert source_phase(source.encode()) == phase


def test_check_phase_names_the_file_and_the_choices():
    migration = MigrationFile("202001010000", "x", "202001010000_x.py", phase="typo")
    with pytest.raises(MigrationFileError) as error:
        check_phase(migration)
    assert "202001010000_x.py" in str(error.value) and "'before_switch'" in str(error.value)
    assert check_phase(migration, "after_restart") == "after_restart"
