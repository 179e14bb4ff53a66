"""The upload phase: each host gets only what it lacks (DESIGN §8, "Delta upload").

The client read the manifest of each host's current release in preflight. It sends an archive
of the entries that are new or changed against that manifest, plus a plan (the new manifest,
the checksums, what to remove); the host hard-links everything else from its current release
(releases never change after the switch), unpacks the archive over it, and verifies the whole
tree against the new manifest. A file that does not verify is named and sent again, once. A
first deploy, or a host without a usable release, gets the whole archive.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import Settings
from ..hosts.group import checked
from ..layout import Code, parse_output, repair_script, unpack_script, upload_paths
from ..lock import LockOwner
from .build import Release
from .state import HostProgress, Step

ProgressFor = Callable[[str], Callable[[int, int], None]]


def upload(
    host: HostProgress,
    settings: Settings,
    release: Release,
    owner: LockOwner,
    publish: bool,
    progress: ProgressFor,
) -> None:
    """Upload, unpack and verify ``release`` on one host (``publish``: rename it into
    ``releases/<id>`` at the end; else the environment phase does)."""
    assert host.state is not None
    transport = host.transport
    previous = host.state.manifest if host.state.current in host.state.releases else None
    payload = release.payload(previous)
    archive_path, plan_path = upload_paths(host.state.root, release.id)
    common = {
        "owner": owner,
        "release": release.id,
        "shared_files": settings.shared_files,
        "shared_dirs": settings.shared_dirs,
        "publish": publish,
    }
    with host.attempt(Step.UPLOADED):
        transport.put(payload.archive, archive_path, progress(host.name))
        transport.put(payload.plan, plan_path)
        host.files_sent = payload.files
        host.payload_bytes = payload.size
        script = unpack_script(
            transport.target.root,
            sha256=payload.archive_sha256,
            plan_sha256=payload.plan_sha256,
            previous=payload.previous,
            compression=payload.compression,
            **common,
        )
        result = transport.run_script(script)
        host.last = result
        if result.exit_code != Code.MISMATCH:
            checked(result, "upload")
            return
        # a reused file differs from what the manifest says (a release was edited in place):
        # send the files named, once, and verify again
        mismatched = parse_output(result.stdout).get("mismatch", [])
        archive, sha256, compression = release.repair_archive(
            mismatched, host.name.replace("/", "_")
        )
        transport.put(archive, archive_path)
        host.files_sent += len(mismatched)
        host.payload_bytes += archive.stat().st_size
        host.run(
            repair_script(transport.target.root, sha256=sha256, compression=compression, **common),
            "upload",
        )
