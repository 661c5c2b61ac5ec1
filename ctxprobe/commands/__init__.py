"""One module per CLI command group; each exposes click commands that cli.py registers."""
