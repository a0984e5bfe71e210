"""Run the dataset job on a simulated multi-node Ray cluster whose worker nodes declare GPUs; write a JSON result
(OUT_DIR/result.json: not stdout, where a raylet's own warning can land after it).

    python tests/multinode_job.py OUT_DIR [GPU_NODES] [GPUS_PER_NODE]

The cluster (``ray.cluster_utils.Cluster``: one raylet per node, all on this machine) has a CPU-only head
(1 CPU, for reading the index and the CPU stages) and GPU_NODES worker nodes with 2 CPUs and GPUS_PER_NODE
GPUs each. The GPUs are declared, not real: Ray schedules by them and sets ``CUDA_VISIBLE_DEVICES`` per
actor, and the stylizer falls back to the CPU inside the actor because CUDA finds no device. Run by
``tests/test_multinode.py`` in its own process (a process holds one Ray connection).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

_STORE = 120 * 2**20  # object store per node: small, this is one machine


def main(out_dir: str, gpu_nodes: int = 2, gpus_per_node: int = 2) -> int:
    import ray
    import ray.data
    from ray.cluster_utils import Cluster

    from nstray.data import synth
    from nstray.pipeline import run_job

    out = Path(out_dir)
    data = synth.generate(out / "data", 16, seed=4, width=96, height=64)
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "num_gpus": 0, "object_store_memory": _STORE})
    try:
        for _ in range(gpu_nodes):
            cluster.add_node(num_cpus=2, num_gpus=gpus_per_node, object_store_memory=_STORE)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        # every actor is up before batches are handed out, so each one styles some (the test reads who did)
        ray.data.DataContext.get_current().wait_for_min_actors_s = 600
        cfg = {"input": {"annotations": str(data.annotations), "images": str(data.images_dir)},
               "output": str(out / "styled"), "variants": 1, "contact_sheet": 0,
               "plan": {"styles": {"a": {"kind": "multistyle", "index": 5}},
                        "parts": {"body": {"style": "a"}, "wheel": {"style": "a"}, "background": {"style": "none"}}},
               "resources": {"actors": "auto", "gpus_per_actor": 1, "batch_size": 1}}
        summary = run_job(cfg)
        gpu_nodes_found = {n["NodeID"]: n["Resources"].get("GPU", 0) for n in ray.nodes() if n["Alive"]}
        (out / "result.json").write_text(json.dumps({"done": summary.done, "failed": summary.failed,
                                                     "placement": summary.placement, "report": summary.report,
                                                     "nodes": gpu_nodes_found}, default=str))
    finally:
        ray.shutdown()
        cluster.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], *(int(a) for a in sys.argv[2:])))
