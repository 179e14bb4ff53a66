"""Migration files: naming, ordering, validation and loading, with the standard library only.

A migration file is ``<version>_<name>.py`` where ``version`` is 12 or 14 digits
(``YYYYMMDDHHMM[SS]``) and ``name`` is snake_case. Versions stay the exact digit strings of the
file names; they sort after padding 12-digit versions with ``00`` seconds, and two files with the
same padded version are duplicates. Any other ``.py`` file in the folder (``__init__.py`` aside) is
malformed, so a typo never silently skips a migration.

A module may set ``phase = "before_switch" | "after_switch" | "after_restart"`` at top level (a
string literal; default ``after_switch``). The phase is read from the source without importing
it, so ``status`` and ``apply --dry-run`` know it too.

This module imports nothing outside the standard library (and ``deploytools.exceptions``): the
deploy side calls :func:`check_migration_names` on the developer's machine, against the names in
a build archive, before anything is uploaded.
"""

from __future__ import annotations

import ast
import hashlib
import importlib.util
import os
import re
import sys
import traceback
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

from deploytools.exceptions import MigrationFileError

SNAKE_CASE = re.compile(r"[a-z][a-z0-9]*(?:_[a-z0-9]+)*")
FILE_NAME = re.compile(rf"(?P<version>\d{{12}}|\d{{14}})_(?P<name>{SNAKE_CASE.pattern})\.py")
EXAMPLE = "202002111319_migrate_flags_to_redis.py"
IGNORED = frozenset({"__init__.py"})
PHASES = ("before_switch", "after_switch", "after_restart")
DEFAULT_PHASE = "after_switch"


@dataclass(frozen=True)
class MigrationFile:
    """One migration file. ``checksum`` (sha256 hex) is None when built from a name alone."""

    version: str
    name: str
    filename: str
    path: Path | None = None
    checksum: str | None = None
    #: the top-level ``phase`` literal as written (``after_switch`` when absent); None when it
    #: is not a string literal or the file was not read. :func:`check_phase` validates it.
    phase: str | None = None

    @property
    def sort_key(self) -> str:
        """The version padded to 14 digits: the order, and the identity, of a migration."""
        return pad_version(self.version)

    @property
    def description(self) -> str:
        """The name in words, for tables (the docstring would need an import)."""
        return self.name.replace("_", " ")


def pad_version(version: str) -> str:
    """``YYYYMMDDHHMM`` -> ``YYYYMMDDHHMM00``; 14-digit versions are returned unchanged."""
    return version + "00" if len(version) == 12 else version


def is_snake_case(name: str) -> bool:
    """True for names such as ``migrate_flags_to_redis`` (lowercase, digits, single ``_``)."""
    return SNAKE_CASE.fullmatch(name) is not None


def parse_name(filename: str) -> MigrationFile:
    """The :class:`MigrationFile` for a bare file name; MigrationFileError if it is malformed."""
    match = FILE_NAME.fullmatch(filename)
    if match is None:
        raise MigrationFileError(
            f"malformed migration file name {filename!r}: expected "
            f"<12 or 14 digits>_<snake_case_name>.py, e.g. {EXAMPLE}; "
            "rename it, or move it out of the migrations folder"
        )
    return MigrationFile(version=match["version"], name=match["name"], filename=filename)


def _is_candidate(filename: str) -> bool:
    return filename.endswith(".py") and filename not in IGNORED


def _sorted_unique(files: Iterable[MigrationFile]) -> list[MigrationFile]:
    by_key: dict[str, MigrationFile] = {}
    for migration in files:
        other = by_key.get(migration.sort_key)
        if other is not None:
            first, second = sorted((other.filename, migration.filename))
            raise MigrationFileError(
                f"duplicate migration version {migration.sort_key}: {first} and {second} "
                "have the same version; give one of them a new timestamp"
            )
        by_key[migration.sort_key] = migration
    return [by_key[key] for key in sorted(by_key)]


def check_migration_names(names: Iterable[str]) -> list[MigrationFile]:
    """Validate the bare file names of a migrations folder (e.g. from an archive listing).

    Names that are not ``.py`` files, and ``__init__.py``, are ignored. Returns the migrations in
    version order (``checksum`` None); raises MigrationFileError naming the first malformed file
    or both files of a duplicate version.
    """
    return _sorted_unique(parse_name(name) for name in sorted(names) if _is_candidate(name))


def sha256_file(path: Path) -> str:
    """The sha256 hex digest of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def source_phase(source: bytes) -> str | None:
    """The top-level ``phase = "..."`` of a module's source, without importing it.

    ``after_switch`` when the module assigns no ``phase``; None when the value is not a string
    literal. Only sources with a line starting with ``phase`` are parsed, so reading the phase
    of thousands of files stays cheap.
    """
    if not (source.startswith(b"phase") or b"\nphase" in source):
        return DEFAULT_PHASE
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return None
    phase: str | None = DEFAULT_PHASE
    for node in tree.body:
        if isinstance(node, ast.Assign):
            targets, value = node.targets, node.value
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            targets, value = [node.target], node.value
        else:
            continue
        if any(isinstance(t, ast.Name) and t.id == "phase" for t in targets):
            literal = isinstance(value, ast.Constant) and isinstance(value.value, str)
            phase = value.value if literal else None  # type: ignore[union-attr]
    return phase


def check_phase(migration: MigrationFile, phase: object = ...) -> str:
    """The migration's phase (``phase``, else the one read from its source), validated:
    MigrationFileError naming the file and the allowed values otherwise."""
    value = migration.phase if phase is ... else phase
    if value not in PHASES:
        raise MigrationFileError(
            f"migration {migration.filename} sets phase = {value!r}: it must be one of "
            f"{', '.join(repr(p) for p in PHASES)} (a string literal at the top of the module); "
            f"without it the migration runs {DEFAULT_PHASE}"
        )
    return str(value)


def discover(path: Path) -> list[MigrationFile]:
    """The migrations in folder ``path``, validated, checksummed and in version order.

    A missing folder holds no migrations. Sub-folders and non-``.py`` files are ignored.
    """
    path = Path(path)
    try:
        entries = [entry for entry in os.scandir(path) if entry.is_file()]
    except FileNotFoundError:
        return []
    except NotADirectoryError:
        raise MigrationFileError(f"the migrations path {path} is a file, not a folder") from None
    except PermissionError as error:
        raise MigrationFileError(f"cannot read the migrations folder {path}: {error}") from None
    files = []
    for entry in sorted(entries, key=lambda e: e.name):
        if not _is_candidate(entry.name):
            continue
        migration = parse_name(entry.name)
        file_path = path.absolute() / entry.name
        try:
            source = file_path.read_bytes()
        except OSError as error:
            raise MigrationFileError(f"cannot read migration {file_path}: {error}") from None
        files.append(
            MigrationFile(
                version=migration.version,
                name=migration.name,
                filename=entry.name,
                path=file_path,
                checksum=hashlib.sha256(source).hexdigest(),
                phase=source_phase(source),
            )
        )
    return _sorted_unique(files)


def module_name(migration: MigrationFile) -> str:
    """The ``sys.modules`` key of a loaded migration (file names start with a digit)."""
    return f"deploytools_migration_{migration.sort_key}_{migration.name}"


def load_module(migration: MigrationFile) -> ModuleType:
    """Import a migration file from source, writing no bytecode next to it.

    The source is compiled in memory (never through ``__pycache__``), and bytecode writing is off
    while the module body runs, so modules it imports from the release stay uncached too. Any
    error while importing, a module without a callable ``run``, or a ``phase`` that is not one
    of :data:`PHASES`, is a MigrationFileError naming the file.
    """
    if migration.path is None:
        raise MigrationFileError(f"{migration.filename}: no path to load it from")
    path = migration.path
    name = module_name(migration)
    try:
        source = path.read_bytes()
        code = compile(source, str(path), "exec", dont_inherit=True)
    except SyntaxError as error:
        raise MigrationFileError(
            f"migration {migration.filename} does not compile: {error.msg} "
            f"(line {error.lineno}); fix the file before running migrations"
        ) from None
    except OSError as error:
        raise MigrationFileError(f"cannot read migration {path}: {error}") from None
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None  # a path ending in .py always gets a spec
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    previous = sys.dont_write_bytecode
    sys.dont_write_bytecode = True
    try:
        exec(code, module.__dict__)
    except (Exception, SystemExit) as error:  # sys.exit() while importing is a broken file too
        sys.modules.pop(name, None)
        lines = [
            frame.lineno
            for frame in traceback.extract_tb(error.__traceback__)
            if frame.filename == str(path)
        ]
        where = f" (line {lines[-1]})" if lines else ""
        raise MigrationFileError(
            f"migration {migration.filename} fails to import{where}: "
            f"{type(error).__name__}: {error}; fix the file before running migrations"
        ) from None
    finally:
        sys.dont_write_bytecode = previous
    if not callable(getattr(module, "run", None)):
        sys.modules.pop(name, None)
        raise MigrationFileError(
            f"migration {migration.filename} has no run(ctx) function; "
            "every migration must define run(ctx)"
        )
    try:
        check_phase(migration, getattr(module, "phase", DEFAULT_PHASE))
    except MigrationFileError:
        sys.modules.pop(name, None)
        raise
    return module


def defines_revert(migration: MigrationFile) -> bool:
    """Whether the file defines a top-level ``revert`` — read from its syntax tree, not imported.

    Used where nothing may be imported (``revert --dry-run``).
    """
    if migration.path is None:
        return False
    try:
        tree = ast.parse(migration.path.read_bytes(), filename=str(migration.path))
    except (OSError, SyntaxError, ValueError):
        return False
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == "revert":
            return True
        if isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == "revert" for t in targets):
                return True
        if isinstance(node, ast.Import | ast.ImportFrom) and any(
            (alias.asname or alias.name) == "revert" for alias in node.names
        ):
            return True
    return False
