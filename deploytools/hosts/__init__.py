"""Reaching the hosts: one ``Transport`` interface for a local directory and for SSH, and the
``HostGroup`` that runs a phase on every host in parallel, as a barrier."""

from .group import HostGroup, checked, phase_error

__all__ = ["HostGroup", "checked", "phase_error"]
