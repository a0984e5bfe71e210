"""Cluster definitions: Ray's own validation of ray-config.yaml, KubeRay manifests, the local dev cluster."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]


def test_ray_cluster_launcher_config_validates():
    import ray
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load((REPO / "ray-config.yaml").read_text())
    validate_config(prepare_config(config))  # Ray's JSON schema + its own consistency checks
    types = config["available_node_types"]
    head = types[config["head_node_type"]]
    assert head["resources"].get("CPU") == 0, "the head must not run pipeline stages"
    gpu_types = [t for n, t in types.items() if n != config["head_node_type"]]
    assert gpu_types and all(t["node_config"]["InstanceType"].startswith(("g6", "g5", "p4", "p5")) for t in gpu_types)
    assert all(t["max_workers"] >= 1 and t["min_workers"] == 0 for t in gpu_types), "GPU workers autoscale from 0"
    assert any("pip install" in c and "~/nstray" in c for c in config["setup_commands"])
    assert config["file_mounts"] == {"~/nstray": "."}
    assert ray.__version__ == "2.60.0"


@pytest.mark.parametrize("name", ["raycluster.yaml", "rayjob.yaml"])
def test_kuberay_manifests(name):
    import ray

    doc = yaml.safe_load((REPO / "cluster" / "kuberay" / name).read_text())
    assert doc["apiVersion"] == "ray.io/v1"
    spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"]["rayClusterSpec"]
    assert doc["kind"] in ("RayCluster", "RayJob")
    assert spec["rayVersion"] == ray.__version__, "the cluster's Ray must match the client's"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"]["num-cpus"] == "0"
    workers = spec["workerGroupSpecs"]
    for group in workers:
        limits = group["template"]["spec"]["containers"][0]["resources"]["limits"]
        assert limits["nvidia.com/gpu"] == "1"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"]
    if doc["kind"] == "RayJob":
        script = doc["spec"]["entrypoint"].split()[1].replace("/app/", "")
        assert (REPO / script).is_file(), f"RayJob entrypoint {script} is missing"
    images = {c["image"] for g in [head, *workers] for c in g["template"]["spec"]["containers"]}
    assert len(images) == 1


def test_iam_policy_is_valid_json():
    import json

    policy = json.loads((REPO / "cluster" / "iam-policy.json").read_text())
    actions = {a for s in policy["Statement"] for a in s["Action"]}
    assert {"s3:GetObject", "s3:PutObject", "s3:ListBucket"} <= actions


def test_dev_cluster_up_and_down():
    """cluster/dev-up.sh starts a Ray head with the Jobs API and an S3 endpoint; dev-down.sh stops both."""
    import shutil
    import tempfile

    dev = Path(tempfile.mkdtemp(prefix="nsdev", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    env = dict(os.environ, NSTRAY_DEV_DIR=str(dev), NSTRAY_DEV_S3_PORT="28433",
               NSTRAY_DEV_RAY_PORT="26480", NSTRAY_DEV_DASHBOARD_PORT="28365")
    try:
        up = subprocess.run([str(REPO / "cluster" / "dev-up.sh")], env=env, timeout=120,
                            capture_output=True, text=True)
        assert up.returncode == 0, f"dev-up.sh failed:\n{up.stdout}\n{up.stderr}"
        import boto3
        from ray.job_submission import JobSubmissionClient

        s3 = boto3.client("s3", endpoint_url="http://127.0.0.1:28433")  # credentials: the env dev-up.sh used
        s3.create_bucket(Bucket="dev-bucket")
        assert "dev-bucket" in [b["Name"] for b in s3.list_buckets()["Buckets"]]
        assert JobSubmissionClient("http://127.0.0.1:28365").list_jobs() == []
    finally:
        subprocess.run([str(REPO / "cluster" / "dev-down.sh")], env=env, timeout=60)
    left = subprocess.run(["pgrep", "-f", str(dev)], capture_output=True, text=True).stdout
    shutil.rmtree(dev, ignore_errors=True)
    assert left.strip() == "", f"processes left running: {left}"
