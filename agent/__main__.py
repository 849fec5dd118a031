"""``python -m agent``: run the QUIC-Flow agent (same options as ``quicflow agent``)."""

from agent import cli

if __name__ == "__main__":
    cli.agent(prog_name="python -m agent")
