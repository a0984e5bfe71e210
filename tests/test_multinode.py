"""Scale-out, simulated: on a Ray cluster of a CPU head and two worker nodes that declare 2 GPUs each
(``ray.cluster_utils.Cluster``), ``actors: auto`` grows the stylizer pool to one actor per declared GPU,
each actor sees exactly its own device id in ``CUDA_VISIBLE_DEVICES``, and since no GPU is really there
each falls back to the CPU inside the actor and the job still completes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq

SCRIPT = Path(__file__).with_name("multinode_job.py")


def test_one_actor_per_declared_gpu_each_on_its_own_device(tmp_path):
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    env.pop("RAY_ADDRESS", None)
    proc = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path), "2", "2"], capture_output=True, text=True,
                          env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    result = json.loads((tmp_path / "result.json").read_text())
    assert (result["done"], result["failed"]) == (16, 0)
    assert sorted(result["nodes"].values()) == [0, 2, 2]
    placement = result["placement"]
    assert (placement["actors"], placement["gpus_per_actor"]) == (4, 1.0)  # auto: one per declared GPU

    workers = result["report"]["actors"]["workers"]
    assert len(workers) == 4 and len({w["actor"] for w in workers}) == 4
    by_node: dict[str, list[str]] = defaultdict(list)
    for w in workers:
        assert w["device"] == "cpu"  # declared GPUs, no CUDA device: CPU fallback inside the actor
        assert w["cuda_visible_devices"] == w["gpu_ids"][0] and len(w["gpu_ids"]) == 1  # exactly its own GPU
        by_node[w["node"]].append(w["cuda_visible_devices"])
    gpu_node_ids = {n for n, gpus in result["nodes"].items() if gpus}
    assert set(by_node) == gpu_node_ids  # no actor on the CPU-only head
    assert all(sorted(ids) == ["0", "1"] for ids in by_node.values())  # two actors per node, different GPUs

    rows = pq.read_table(tmp_path / "styled" / "manifest").to_pylist()
    assert len(rows) == 16 and {r["status"] for r in rows} == {"done"}
    assert {json.loads(r["worker"])["actor"] for r in rows} == {w["actor"] for w in workers}
