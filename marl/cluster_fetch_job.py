"""A Ray job that reads a finished job's output directory and prints it into its own logs.

Run by ``run.py jobs fetch`` (marl/cluster.py) as ``python cluster_fetch_job.py PATH [NODE_ID]``,
uploaded alone as the job's working_dir, so it needs nothing but Ray and the standard library.
A task pinned to NODE_ID (the node where the job's driver ran) packs PATH as a tar.gz; the
driver prints ``marl-fetch-begin <sha256> <bytes>``, the archive in base64 lines, and
``marl-fetch-end``. The client downloads the logs over the job API and checks the digest.
"""

import base64
import hashlib
import io
import os
import sys
import tarfile

import ray

LIMIT = 256 * 2**20  # as marl.cluster.FETCH_LIMIT_BYTES


def pack(path: str) -> bytes:
    if not os.path.isdir(path):
        raise FileNotFoundError(f"no directory '{path}' on node {ray.get_runtime_context().get_node_id()}")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        tar.add(path, arcname=os.path.basename(path.rstrip("/")))
    if buf.tell() > LIMIT:
        raise ValueError(
            f"'{path}' packs to {buf.tell() / 2**20:.0f} MiB, more than fetch carries "
            f"({LIMIT // 2**20} MiB); copy it from the cluster's storage instead"
        )
    return buf.getvalue()


def main(path: str, node_id: str | None) -> int:
    ray.init(log_to_driver=False)
    options = {"num_cpus": 0}
    if node_id:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id, soft=False)
    try:
        data = ray.get(ray.remote(pack).options(**options).remote(path))
    except Exception as e:  # one line for `run.py jobs fetch`
        cause = getattr(e, "cause", None) or e
        print(f"error: {type(cause).__name__}: {str(cause).strip().splitlines()[-1]}", flush=True)
        return 1
    text = base64.b64encode(data).decode()
    out = sys.stdout
    out.write(f"marl-fetch-begin {hashlib.sha256(data).hexdigest()} {len(data)}\n")
    for i in range(0, len(text), 4096):
        out.write(text[i:i + 4096] + "\n")
    out.write("marl-fetch-end\n")
    out.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else None))
