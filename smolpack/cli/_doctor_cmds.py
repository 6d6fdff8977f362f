"""Placeholder; filled in by its own change."""

import click

COMMANDS: list[click.Command] = []
