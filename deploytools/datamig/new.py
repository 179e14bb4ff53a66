"""Create a migration file from the template: ``migrations/<UTC now>_<name>.py``.

Called by ``invoke datamig.new NAME``. The version is the current UTC time to the second, so
migrations written on different branches sort by when they were created.
"""

from __future__ import annotations

from datetime import UTC, datetime
from importlib import resources
from pathlib import Path
from string import Template

from deploytools.datamig.discovery import FILE_NAME, is_snake_case, pad_version
from deploytools.exceptions import UsageError

TEMPLATE = "migration.py.tmpl"


def _existing_versions(folder: Path) -> dict[str, str]:
    """Padded version -> file name, for the well-named files already in ``folder``."""
    if not folder.is_dir():
        return {}
    versions = {}
    for entry in folder.iterdir():
        match = FILE_NAME.fullmatch(entry.name)
        if match:
            versions[pad_version(match["version"])] = entry.name
    return versions


def new_migration(folder: Path, name: str, now: datetime | None = None) -> Path:
    """Write ``<folder>/<YYYYMMDDHHMMSS>_<name>.py`` (UTC) from the template and return its path.

    Refuses (UsageError) a name that is not snake_case and a version already taken in
    ``folder``. ``now`` (default: the current time; naive means UTC) is for tests.
    """
    if not is_snake_case(name):
        raise UsageError(
            f"migration name {name!r} is not snake_case: use lowercase letters, digits and "
            "single underscores, starting with a letter (e.g. migrate_flags_to_redis)"
        )
    now = datetime.now(UTC) if now is None else now
    now = now.replace(tzinfo=UTC) if now.tzinfo is None else now.astimezone(UTC)
    version = now.strftime("%Y%m%d%H%M%S")
    folder = Path(folder)
    taken = _existing_versions(folder).get(version)
    if taken is not None:
        raise UsageError(
            f"version {version} is already used by {folder / taken}; wait a second and retry"
        )
    text = Template(
        resources.files("deploytools.datamig").joinpath(TEMPLATE).read_text(encoding="utf-8")
    ).substitute(
        version=version,
        name=name,
        description=name.replace("_", " ").capitalize(),
        created=now.strftime("%Y-%m-%d %H:%M:%S UTC"),
    )
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{version}_{name}.py"
    try:
        with path.open("x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise UsageError(f"{path} already exists") from None
    return path
