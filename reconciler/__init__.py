"""QUIC-Flow reconciler: reads the config repo, plans, releases and records outcomes in Git.

Subpackages are the stages of the pipeline (gitops → engine → drivers) plus the
server-side adapters (hub, api, store, log). Pure logic lives in modules that import
no adapter library; see the import-linter contracts in pyproject.toml.
"""

from agent import __version__

__all__ = ["__version__"]
