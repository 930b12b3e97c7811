"""The verbs of the CLI, one module per verb group; each registers itself on `cli.app`."""
