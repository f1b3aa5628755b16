"""The `ingot` command line. Nothing imports this package."""
