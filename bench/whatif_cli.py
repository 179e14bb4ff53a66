"""``invoke`` with a candidate change patched into the client, for ``profile_deploy.py``'s
what-ifs on the command line (start-up included), then run as ``python -m invoke`` runs.

    python bench/whatif_cli.py VARIANT -f CONFIG deploy --json

Variants:

- ``as-is``: nothing patched (the same entry point, so both pay the same);
- ``ssh-on-main-thread``: the SSH transports made on the main thread before the build starts,
  as deploytools did until the connecting threads made them (the first one imports paramiko
  and Fabric, about 60 ms the build then waits for): what that change buys.
"""

from __future__ import annotations

import sys

from deploytools.hosts import group
from deploytools.hosts.transport import open_transport


def ssh_on_main_thread() -> None:
    def connect_in_background(self: group.HostGroup) -> None:
        self._transports = {t.name: open_transport(t, self.settings) for t in self._targets}
        for name, transport in self._transports.items():
            self._opening[name] = self._pool.submit(_connected, transport)

    def _connected(transport):
        group._quietly_connect(transport)
        return transport

    group.HostGroup.connect_in_background = connect_in_background  # type: ignore[method-assign]


VARIANTS = {"as-is": lambda: None, "ssh-on-main-thread": ssh_on_main_thread}


def main() -> None:
    variant, *argv = sys.argv[1:]
    VARIANTS[variant]()
    from invoke.main import program

    program.run(["invoke", *argv])


if __name__ == "__main__":
    main()
