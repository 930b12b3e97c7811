"""The collectives of a compiled program, read from its optimized HLO (engine/plan/comms.py):
real XLA programs on the 8 CPU devices, whose traffic is known by construction."""

from __future__ import annotations

import numpy as np
import pytest

from gemma_cli.engine.plan import comms


@pytest.fixture(scope="module")
def mesh():
    import jax
    from jax.sharding import Mesh

    return Mesh(np.array(jax.devices()[:8]).reshape(2, 4), ("batch", "model"))


def test_an_all_gather_and_an_all_reduce_with_their_bytes(mesh):
    import jax
    from jax.sharding import NamedSharding
    from jax.sharding import PartitionSpec as P

    x = jax.device_put(np.ones((8, 256), np.float32), NamedSharding(mesh, P("model", None)))
    # gather the rows over the 4 devices of each model group: a f32[8,256] result
    gather = jax.jit(lambda a: a * 2, out_shardings=NamedSharding(mesh, P()))
    ops = comms.collectives(gather.lower(x).compile().as_text(), devices=8)
    assert [(o.kind, o.result_bytes, o.group) for o in ops] == [("all-gather", 8 * 256 * 4, 4)]
    assert comms.traffic(ops)["total"]["bytes_per_device"] == 8 * 256 * 4 * 3 // 4
    # sum over the sharded rows: each device reduces its 2 rows, then an all-reduce of f32[256]
    total = jax.jit(lambda a: a.sum(axis=0), out_shardings=NamedSharding(mesh, P()))
    ops = comms.collectives(total.lower(x).compile().as_text(), devices=8)
    assert [(o.kind, o.result_bytes, o.group) for o in ops] == [("all-reduce", 256 * 4, 4)]
    t = comms.traffic(ops)
    assert t["all-reduce"] == {"count": 1, "bytes_per_device": 2 * 1024 * 3 // 4, "payload_bytes": 1024}
    assert t["all-gather"]["count"] == 0


def test_no_collective_when_nothing_is_sharded():
    import jax

    ops = comms.collectives(jax.jit(lambda a: a + 1).lower(np.ones(4, np.float32)).compile().as_text())
    assert ops == [] and comms.traffic(ops)["total"] == {"count": 0, "bytes_per_device": 0, "payload_bytes": 0}


@pytest.mark.parametrize(("line", "want"), [
    # iota replica groups [groups, size]<=[devices]; bf16
    ("  %ar = bf16[4,8]{1,0} all-reduce(bf16[4,8]{1,0} %p), channel_id=1, replica_groups=[2,4]<=[8], "
     "use_global_device_ids=true, to_apply=%add", ("all-reduce", 64, 64, 4)),
    # an async start: (operand, result) tuple; the result counts
    ("  %ag = (f32[2,8]{1,0}, f32[8,8]{1,0}) all-gather-start(f32[2,8]{1,0} %p), channel_id=2, "
     "replica_groups={{0,1,2,3},{4,5,6,7}}, dimensions={0}", ("all-gather", 256, 64, 4)),
    # a tuple all-reduce over every device (empty groups)
    ("  ROOT %t = (f32[16]{0}, s32[2]{0}) all-reduce(f32[16]{0} %a, s32[2]{0} %b), replica_groups={}, "
     "to_apply=%add", ("all-reduce", 72, 72, 8)),
    ("  %rs = f32[2]{0} reduce-scatter(f32[8]{0} %p), replica_groups=[2,4]<=[8], dimensions={0}, "
     "to_apply=%add", ("reduce-scatter", 8, 32, 4)),
    # jax 0.10's optimized HLO: operands without shapes, groups as named mesh axes
    ("  ROOT %all-gather = f32[8,256]{1,0} all-gather(%fusion), channel_id=1, replica_groups=mesh['axis_0'=4,"
     "'axis_1'=1,'axis_2'=2], device_ids=([2,4]T(1,0)) {'axis_0'}, dimensions={0}", ("all-gather", 8192, 0, 4)),
    ("  %ar = f32[4]{0} all-reduce(%w), replica_groups=mesh['a'=2,'b'=4] {'a','b'}, to_apply=%add",
     ("all-reduce", 16, 0, 8)),
    ("  %cp = f32[16]{0} collective-permute(f32[16]{0} %p), source_target_pairs={{0,1},{1,0}}",
     ("collective-permute", 64, 64, 2)),
])
def test_hlo_lines(line, want):
    (op,) = comms.collectives(line, devices=8)
    assert (op.kind, op.result_bytes, op.operand_bytes, op.group) == want


def test_ring_bytes_per_kind():
    assert comms.Collective("all-reduce", 1000, 1000, 4).bytes_per_device == 1500
    assert comms.Collective("reduce-scatter", 250, 1000, 4).bytes_per_device == 750
    assert comms.Collective("reduce-scatter", 250, 0, 4).bytes_per_device == 750  # operand = 4 results
    assert comms.Collective("all-to-all", 1000, 1000, 2).bytes_per_device == 500
    assert comms.Collective("collective-permute", 64, 64, 2).bytes_per_device == 64
    assert comms.Collective("all-gather", 1000, 250, 1).bytes_per_device == 0
