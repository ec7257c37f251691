"""``python -m delayq`` runs the delayq command."""

from delayq.cli import main

main()
