"""``python -m reconciler`` runs the ``quicflow`` command line."""

from reconciler.cli import main

main()
