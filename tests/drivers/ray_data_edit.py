"""A caller's Ray Data pipeline with ``tokedit.integrations.ray.RayEditor``.

``python ray_data_edit.py DATA_FILE PRIOR OUT OPTIONS_JSON``: on a local Ray instance, read
the JSON lines of DATA_FILE, edit them with ``map_batches(RayEditor, ...)`` (one actor of 2
CPUs, as ``--engine ray`` sizes its actor on 2 cores) in two batch formats and sizes, read
every row back (no iteration left open), shut Ray down and write ``OUT/pyarrow.jsonl`` and
``OUT/numpy.jsonl``, rows sorted by id. Run as its own process: Ray Data's iterator threads
can outlive ``ray.shutdown()``, and one that touches Ray afterwards ends the process.
"""

import json
import sys
from pathlib import Path

import ray

from tokedit.integrations.ray import RayEditor

data, prior, out, options = sys.argv[1], sys.argv[2], Path(sys.argv[3]), json.loads(sys.argv[4])
ray.init(
    address="local",
    num_cpus=3,
    include_dashboard=False,
    log_to_driver=False,
    logging_level="ERROR",
)
ds = ray.data.read_json(data)
results = {}
for batch_format, batch_size in (("pyarrow", 7), ("numpy", 16)):
    edited = ds.map_batches(
        RayEditor,
        fn_constructor_args=(prior,),
        fn_constructor_kwargs={"device": "cpu", **options},
        batch_format=batch_format,
        batch_size=batch_size,
        concurrency=1,
        num_cpus=2,
    )
    results[batch_format] = sorted(edited.take_all(), key=lambda r: r["id"])
ray.shutdown()
out.mkdir(parents=True, exist_ok=True)
for name, rows in results.items():
    with open(out / f"{name}.jsonl", "w") as f:
        for r in rows:
            keep = {k: v for k, v in r.items() if k != "tokedit_edits"}
            keep["tokedit_edits"] = [dict(e) for e in r["tokedit_edits"]]
            f.write(json.dumps(keep, default=int) + "\n")
print("done", flush=True)
