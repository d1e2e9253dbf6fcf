"""Subcommands; see e2edge.cli.COMMANDS."""
