"""QUIC-Flow agent: runs on a target host, holds one QUIC connection to the hub and runs steps.

It must not import the reconciler's server-side packages; it shares only the wire
protocol module.
"""

from importlib import metadata as _metadata

try:
    __version__ = _metadata.version("quic-flow")
except _metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"
