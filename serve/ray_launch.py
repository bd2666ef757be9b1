"""`serve --engine ray`: from the command's options to a running Serve application (ray_app.py)."""

from __future__ import annotations

import importlib.util
import math
from dataclasses import replace

from instantid_edge.runtime.errors import ConfigError


def serve_on_ray(spec, config, app_config, cluster, host: str, port: int) -> None:
    if importlib.util.find_spec("ray") is None:
        raise ConfigError("--engine ray needs Ray Serve: pip install 'instantid-edge[cluster]'")
    from .ray_app import Scaling, run_on_ray

    # a replica's inference threads match the CPUs Ray reserves for it, unless --threads says otherwise
    spec = replace(spec, threads=spec.threads or max(1, math.floor(cluster.cpus_per_replica)))
    scaling = Scaling(cluster.replicas or 1, cluster.cpus_per_replica, cluster.autoscale)
    run_on_ray(spec, config, app_config, scaling, cluster.address, host, port)
