"""``python -m reconciler`` runs the ``quicflow`` command line."""

from reconciler.launcher import main

main()
