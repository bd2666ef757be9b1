"""CLI commands of the torch-free runtime. Imported lazily by instantid_edge.cli."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .errors import PackageError


@click.command()
@click.argument("package", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def inspect(package, as_json):
    """Print a model package's manifest and verify every file's size and sha256.

    \b
    Example:
      instantid-edge inspect /tmp/pkg-tiny
    """
    from .inspect import summary
    from .manifest import read_manifest, verify_files

    manifest = read_manifest(package)
    click.echo(json.dumps(manifest.data, indent=2) if as_json else summary(manifest))
    problems = verify_files(manifest)
    if problems:
        raise PackageError(f"package {package} is damaged: " + "; ".join(problems))
    if not as_json:
        click.echo(f"all {len(manifest.data['files'])} files present and intact", err=True)
