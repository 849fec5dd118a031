"""Where the hub keeps its files: one directory, ``hub/``, inside the reconciler's data dir.

``quicflow serve`` (the running hub), ``quicflow hub fingerprint``, ``quicflow agent-token``
and ``quicflow agents`` all find the hub's certificate, key, token file and agent snapshot
through ``hub_dir``, so the pin and tokens an operator prints are the ones the running hub
uses.  Earlier releases had the CLI commands read and write the data dir itself while the
hub used ``hub/``; ``stray_files`` finds what they left there so the CLI can say so.
"""

from __future__ import annotations

from pathlib import Path

from reconciler.hub import tls, tokens

HUB_DIR = "hub"


def hub_dir(data_dir: Path) -> Path:
    """The hub's directory inside the reconciler's data dir ``data_dir``."""
    return Path(data_dir) / HUB_DIR


def stray_files(data_dir: Path) -> list[Path]:
    """Hub files that an earlier CLI wrote into ``data_dir`` itself; the hub never read them."""
    names = (tls.CERTIFICATE_FILE, tls.KEY_FILE, tokens.TOKENS_FILE)
    return [path for name in names if (path := Path(data_dir) / name).exists()]
