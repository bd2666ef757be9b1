"""`serve`'s options for running on a Ray cluster (--engine ray ...), kept apart from cli.py. Imports no Ray."""

from __future__ import annotations

import re
from dataclasses import dataclass

import click

from instantid_edge.runtime.errors import ConfigError

AUTOSCALE = re.compile(r"([0-9]+):([0-9]+)")


@dataclass(frozen=True)
class ClusterOptions:
    engine: str = "local"
    replicas: int | None = None
    address: str | None = None
    cpus_per_replica: float = 1.0
    autoscale: tuple[int, int] | None = None

    def check(self) -> None:
        """Refuse cluster options without --engine ray, and contradictory ones, before anything starts."""
        given = [name for name, value in (("--replicas", self.replicas), ("--ray-address", self.address),
                 ("--autoscale", self.autoscale)) if value is not None]  # fmt: skip
        if self.engine != "ray" and given:
            raise ConfigError(f"{', '.join(given)} {'needs' if len(given) == 1 else 'need'} --engine ray")
        if self.replicas is not None and self.autoscale is not None:
            raise ConfigError("give --replicas or --autoscale MIN:MAX, not both")


def _autoscale(ctx, param, value: str | None) -> tuple[int, int] | None:
    if value is None:
        return None
    match = AUTOSCALE.fullmatch(value)
    if not match or not 1 <= int(match[1]) <= int(match[2]):
        raise click.BadParameter(f"{value!r}: give MIN:MAX replicas with 1 <= MIN <= MAX, such as 1:4")
    return int(match[1]), int(match[2])


def cluster_options(command):
    """Add --engine, --replicas, --ray-address, --cpus-per-replica and --autoscale; the command receives them as
    one ClusterOptions in `cluster`."""
    options = [
        click.option(
            "--engine",
            type=click.Choice(["local", "ray"]),
            default="local",
            show_default=True,
            help="local: this process runs the jobs. ray: replicas on a Ray cluster (the `cluster` extra).",
        ),
        click.option("--replicas", type=click.IntRange(1, 1024), help="Worker replicas (--engine ray; default 1)."),
        click.option(
            "--ray-address",
            "address",
            help="A running cluster's head, HOST:PORT (--engine ray; default: $RAY_ADDRESS, else the cluster `ray "
            "start` made on this machine, else a new one-machine cluster).",
        ),
        click.option(
            "--cpus-per-replica",
            type=click.FloatRange(min=0.1),
            default=1.0,
            show_default=True,
            help="CPUs Ray reserves per replica; also its inference threads unless --threads.",
        ),
        click.option("--autoscale", callback=_autoscale, help="MIN:MAX replicas, scaled by Serve on queue length."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def collect(values: dict) -> ClusterOptions:
    """Pop the cluster options out of a command's keyword arguments."""
    names = ("engine", "replicas", "address", "cpus_per_replica", "autoscale")
    options = ClusterOptions(**{name: values.pop(name) for name in names})
    options.check()
    return options
