"""``invoke`` with a candidate change patched into the client, for ``profile_deploy.py``'s
what-ifs on the command line (start-up included), then run as ``python -m invoke`` runs.

    python bench/whatif_cli.py VARIANT -f CONFIG deploy --json

Variants:

- ``as-is``: nothing patched (the same entry point, so both pay the same);
- ``ssh-in-thread``: the SSH transport (paramiko and Fabric, about 70 ms of imports) is
  opened in the thread that connects, so the build starts at once instead of after the
  import (``HostGroup`` opens every transport on the main thread before the build).
"""

from __future__ import annotations

import concurrent.futures
import sys
from collections.abc import Iterable

from deploytools.config import Settings, Target
from deploytools.hosts import group
from deploytools.hosts.transport import Transport, open_transport


class HostGroupOpeningInThreads(group.HostGroup):
    """``HostGroup`` whose transports are opened (their modules imported) by the threads
    that connect ahead; ``transports`` waits for them."""

    def __init__(self, settings: Settings, targets: Iterable[Target] | None = None) -> None:
        self.settings = settings
        self._targets = list(settings.targets if targets is None else targets)
        self._opened: dict[str, concurrent.futures.Future] = {}
        self._pool = concurrent.futures.ThreadPoolExecutor(
            max_workers=max(1, min(group.MAX_THREADS, len(self._targets))),
            thread_name_prefix="host",
        )
        self._connecting: dict[str, concurrent.futures.Future] = {}

    def connect_in_background(self) -> None:
        for target in self._targets:
            opened: concurrent.futures.Future = concurrent.futures.Future()
            self._opened[target.name] = opened

            def job(target: Target = target, opened: concurrent.futures.Future = opened) -> None:
                try:
                    transport = open_transport(target, self.settings)
                except BaseException as error:
                    opened.set_exception(error)
                    return
                opened.set_result(transport)
                group._quietly_connect(transport)

            self._connecting[target.name] = self._pool.submit(job)

    @property
    def transports(self) -> dict[str, Transport]:  # type: ignore[override]
        if not self._opened:  # nobody connects ahead: open them here, as HostGroup does
            for target in self._targets:
                opened: concurrent.futures.Future = concurrent.futures.Future()
                opened.set_result(open_transport(target, self.settings))
                self._opened[target.name] = opened
        return {name: opened.result() for name, opened in self._opened.items()}


def ssh_in_thread() -> None:
    from deploytools.deploy import pipeline

    pipeline.HostGroup = HostGroupOpeningInThreads  # type: ignore[misc]


VARIANTS = {"as-is": lambda: None, "ssh-in-thread": ssh_in_thread}


def main() -> None:
    variant, *argv = sys.argv[1:]
    VARIANTS[variant]()
    from invoke.main import program

    program.run(["invoke", *argv])


if __name__ == "__main__":
    main()
