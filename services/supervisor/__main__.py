"""`python -m services.supervisor` is the `hark` command."""

from services.supervisor.cli import main

main()
