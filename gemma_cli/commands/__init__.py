"""The verbs of the CLI, one module per verb group; `gemma_cli.cli` registers them on the app."""
