"""One process of a launcher test (tests/test_launchers.py): set up the engine as every verb
does, then run one collective over all processes' devices and print one JSON line.

    SLURM_JOB_ID=... SLURM_NTASKS=2 SLURM_PROCID=i ... GEMMA_CPU_DEVICES=4 python tests/launch_probe.py
"""

from __future__ import annotations

import json

from gemma_cli.engine.core import runtime


def main() -> None:
    runtime.setup()
    import jax
    import numpy as np
    from jax.sharding import Mesh, NamedSharding, PartitionSpec

    devices = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
    mesh = Mesh(np.array(devices), ("batch",))
    sharding = NamedSharding(mesh, PartitionSpec("batch"))
    local = np.full((jax.local_device_count(),), jax.process_index() + 1, dtype=np.float32)
    x = jax.make_array_from_process_local_data(sharding, local, (jax.device_count(),))
    total = float(jax.jit(lambda a: a.sum(), out_shardings=NamedSharding(mesh, PartitionSpec()))(x))
    launch = runtime._state.get("launch")  # noqa: SLF001
    print(json.dumps({
        "process": jax.process_index(),
        "processes": jax.process_count(),
        "devices": jax.device_count(),
        "local_devices": jax.local_device_count(),
        "sum": total,
        "launcher": launch.launcher if launch else None,
    }))


if __name__ == "__main__":
    main()
