"""QUIC-Flow agent: runs on a target host, holds one QUIC connection to the hub and runs steps.

It must not import the reconciler's server-side packages; it shares only the wire
protocol module.
"""

# The one place the version is written: pyproject.toml reads it from here (setuptools
# ``dynamic``), and the reconciler re-exports it. A literal rather than a lookup in the
# installed metadata, which would load ``importlib.metadata`` and the ``email`` package
# into every agent process for one string.
__version__ = "0.1.0"
