"""Wheels for tests that build a release's environment offline (``--no-index --find-links``).

A wheelhouse holds: ``tinyapp_dep`` 1.0 and 2.0, a tiny pure-Python package written here
(module ``tinyapp_dep``, console script ``tinyapp-hello``), to release an application with a
dependency and then change its lock file; a wheel of deploytools built from this checkout; and
the wheels of deploytools' dependencies, which ``python3 dev.py test`` fetches from the package
registry once into ``.wheelhouse/`` in the checkout. Nothing here touches the network.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".wheelhouse"  # deploytools' dependencies, filled by `python3 dev.py test`

TINYAPP_VERSIONS = ("1.0", "2.0")
_EPOCH = (2020, 1, 1, 0, 0, 0)  # a fixed date: the same wheel bytes on every run


def write_wheel(
    directory: Path,
    name: str,
    version: str,
    files: dict[str, str],
    console_scripts: dict[str, str] | None = None,
) -> Path:
    """Write a pure-Python wheel by hand (no build tool, no network); returns its path.

    ``files`` maps paths inside the wheel to their text; ``console_scripts`` maps a command
    name to ``module:function``.
    """
    dist_info = f"{name}-{version}.dist-info"
    contents = dict(files)
    contents[f"{dist_info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
        "Summary: a tiny package for deploytools' tests\n"
    )
    contents[f"{dist_info}/WHEEL"] = (
        "Wheel-Version: 1.0\nGenerator: deploytools-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n"
    )
    if console_scripts:
        contents[f"{dist_info}/entry_points.txt"] = "[console_scripts]\n" + "".join(
            f"{command} = {target}\n" for command, target in console_scripts.items()
        )
    record = []
    for path, text in contents.items():
        data = text.encode()
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}\n")
    contents[f"{dist_info}/RECORD"] = "".join(record) + f"{dist_info}/RECORD,,\n"

    wheel = directory / f"{name}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, text in contents.items():
            info = zipfile.ZipInfo(path, date_time=_EPOCH)
            info.external_attr = 0o644 << 16
            archive.writestr(info, text, zipfile.ZIP_DEFLATED)
    return wheel


def write_tinyapp_dep(directory: Path, version: str) -> Path:
    """``tinyapp_dep-<version>``: ``tinyapp_dep.VERSION`` and ``tinyapp-hello``, which prints
    ``hello from tinyapp_dep <version>``."""
    module = (
        f'"""A tiny dependency for deploy tests."""\n\nVERSION = "{version}"\n\n\n'
        "def hello() -> None:\n"
        '    print(f"hello from tinyapp_dep {VERSION}")\n'
    )
    return write_wheel(
        directory,
        "tinyapp_dep",
        version,
        {"tinyapp_dep/__init__.py": module},
        {"tinyapp-hello": "tinyapp_dep:hello"},
    )


def build_deploytools_wheel(directory: Path) -> Path:
    """A wheel of this checkout, built offline with the test environment's setuptools (in a
    copy, so the checkout gets no ``build/`` or ``egg-info``)."""
    with tempfile.TemporaryDirectory(prefix="deploytools-wheel-") as scratch:
        source = Path(scratch) / "src"
        source.mkdir()
        for name in ("pyproject.toml", "README.md"):
            shutil.copy2(REPO / name, source / name)
        shutil.copytree(
            REPO / "deploytools",
            source / "deploytools",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        built = subprocess.run(
            [
                *pip(),
                "wheel",
                "--no-deps",
                "--no-build-isolation",
                "--no-index",
                "-q",
                "-w",
                str(directory),
                str(source),
            ],
            capture_output=True,
            text=True,
        )
    if built.returncode:
        raise RuntimeError(
            "could not build the deploytools wheel (the test environment needs the build "
            f"requirements of pyproject.toml: run `python3 dev.py test`):\n{built.stderr}"
        )
    return next(directory.glob("deploytools-*.whl"))


def pip() -> list[str]:
    """pip of the test environment, blind to the user's pip configuration and PIP_* variables
    (their extra indexes and find-links would hide a wheel missing from the wheelhouse)."""
    return [sys.executable, "-m", "pip", "--isolated", "--disable-pip-version-check"]


def missing_from(directory: Path) -> str | None:
    """None when deploytools and both tinyapp_dep versions install from ``directory`` alone;
    else pip's explanation."""
    for requirement in ("deploytools", *(f"tinyapp_dep=={v}" for v in TINYAPP_VERSIONS)):
        check = subprocess.run(
            [
                *pip(),
                "install",
                "--dry-run",
                "--ignore-installed",
                "--no-index",
                "--find-links",
                str(directory),
                "-q",
                requirement,
            ],
            capture_output=True,
            text=True,
        )
        if check.returncode:
            return check.stderr.strip() or check.stdout.strip()
    return None


def assemble(directory: Path) -> Path:
    """Fill ``directory`` with the whole wheelhouse; raise naming what is missing."""
    for version in TINYAPP_VERSIONS:
        write_tinyapp_dep(directory, version)
    build_deploytools_wheel(directory)
    for wheel in sorted(CACHE.glob("*.whl")):
        target = directory / wheel.name
        try:
            os.link(wheel, target)  # the cache outlives the run: share its bytes, do not copy
        except OSError:
            shutil.copy2(wheel, target)
    problem = missing_from(directory)
    if problem:
        raise RuntimeError(
            f"{CACHE} lacks wheels of deploytools' dependencies; `python3 dev.py test` fetches "
            f"them from the package registry. pip said:\n{problem}"
        )
    return directory
