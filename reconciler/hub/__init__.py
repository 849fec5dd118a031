"""The hub: the QUIC server side that agents connect to.

It holds the hub's TLS identity (``tls``), the per-agent token store (``tokens``), the
registry of connected agents (``registry``), the QUIC server with its command API for the
engine (``server.Hub``) and the ``quicflow hub`` / ``agent-token`` CLI commands
(``commands``).  The wire protocol itself lives in ``agent.protocol`` because the agent
must not import reconciler packages.

It must not decide *what* to run or where: the engine chooses targets and commands; the
hub only delivers them, streams output back and reports results.  Only ``server`` imports
aioquic.
"""
