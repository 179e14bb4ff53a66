"""This repository's invoke entry: the deploytools tasks (`invoke --list`)."""

from deploytools.tasks import ns  # noqa: F401
