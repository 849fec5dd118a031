"""The hub: the QUIC server side that agents connect to.

It holds where its files live in the data dir (``locations``: ``DATA/hub``, for the
server and the CLI alike), the hub's TLS identity (``tls``), the per-agent token store
(``tokens``), the registry of connected agents (``registry``) and its on-disk snapshot
(``snapshots``), the QUIC server with its command API for the engine (``server.Hub``) and
the ``quicflow hub`` / ``agent-token`` / ``agents`` CLI commands (``commands``).  The wire protocol itself lives in ``agent.protocol`` because the agent
must not import reconciler packages.

It must not decide *what* to run or where: the engine chooses targets and commands; the
hub only delivers them, streams output back and reports results.  Only ``server`` imports
aioquic.
"""
