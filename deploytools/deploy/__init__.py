"""The deploy: build → preflight → upload → switch → migrate → finish, or undo.

The pipeline reads top to bottom in :mod:`deploytools.deploy.pipeline`.
"""

from .pipeline import DeployResult, deploy

__all__ = ["DeployResult", "deploy"]
