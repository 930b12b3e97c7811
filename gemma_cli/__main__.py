"""`python -m gemma_cli` = the `gemma` command."""

from gemma_cli.cli import main

main()
