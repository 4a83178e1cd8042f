"""The peer of `fabric bench nodes`: the same three model jobs as Fabric's nodes run
(encode_state, score_sequence, predict_next_state), as Celery 5 tasks with Redis as the broker
and the result backend.

Two roles, one file:

- the Celery app, imported by `celery -A fabric_peer worker` (the bench starts it with
  `--concurrency` prefork processes). Its models (the weights of each job type) are read once
  at import from the file named by FABRIC_PEER_MODELS, as a node fetches a model once;
- the client, `python fabric_peer.py drive ...`, which submits every job of a jobs file from a
  few threads, waits for every result, and writes the outputs and the timings.

The kernels are the CPU references of gpu-kernels/src/models.rs, on numpy, with the same
wrapping int32 arithmetic: the bench checks every output against Fabric's CPU reference.

Files (all little-endian):
- models: for each job type in the order below, its weights (1,024 + 8,192 + 12 bytes);
- jobs: a u32 count, then per job a u8 job type (index below) and its input;
- outputs: every job's output in the jobs file's order.
"""

import base64
import json
import os
import struct
import sys
import threading
import time
from datetime import datetime

import numpy as np
from celery import Celery

JOB_TYPES = ("encode_state", "score_sequence", "predict_next_state")
INPUT_BYTES = (1024, 256, 4096)
WEIGHTS_BYTES = (1024, 8192, 12)
SCORE_TOP = 8

app = Celery("fabric_peer")
app.conf.update(
    broker_url=os.environ.get("FABRIC_PEER_REDIS", "redis://127.0.0.1:6379/0"),
    result_backend=os.environ.get("FABRIC_PEER_REDIS", "redis://127.0.0.1:6379/0"),
    # What the comparison fixes: a task is acknowledged after it ran (a worker killed
    # mid-task leaves it for another), 16 messages reserved per process, results kept.
    task_acks_late=True,
    worker_prefetch_multiplier=16,
    task_ignore_result=False,
    # Celery's "Optimizing" guide for many short tasks: no rate limiting, and none of the
    # per-task events or result metadata that nobody reads here.
    worker_disable_rate_limits=True,
    worker_send_task_events=False,
    task_send_sent_event=False,
    task_track_started=False,
    result_extended=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
    broker_connection_retry_on_startup=True,
)


def _load_models():
    path = os.environ.get("FABRIC_PEER_MODELS")
    if not path:
        return None
    with open(path, "rb") as file:
        data = file.read()
    if len(data) != sum(WEIGHTS_BYTES):
        raise ValueError(f"{path} has {len(data)} bytes, not {sum(WEIGHTS_BYTES)}")
    models, at = [], 0
    for size in WEIGHTS_BYTES:
        models.append(data[at:at + size])
        at += size
    encode = np.frombuffer(models[0], dtype=np.int8).reshape(16, 64).astype(np.int32)
    corpus = np.frombuffer(models[1], dtype=np.int8).reshape(128, 64).astype(np.int32)
    alpha, shift, steps = struct.unpack("<iII", models[2])
    if shift > 31 or not 1 <= steps <= 64:
        raise ValueError(f"predict_next_state weights: shift {shift}, steps {steps}")
    return encode, corpus, (np.int32(alpha), shift, steps)


MODELS = _load_models()


def encode_state(state_bytes):
    state = np.frombuffer(state_bytes, dtype=np.int8).reshape(16, 64).astype(np.int32)
    return (state @ MODELS[0].T).astype("<i4").tobytes()


def score_sequence(query_bytes):
    queries = np.frombuffer(query_bytes, dtype=np.int8).reshape(4, 64).astype(np.int32)
    scores = queries @ MODELS[1].T
    out = bytearray()
    indices = np.arange(scores.shape[1])
    for row in scores:
        # Highest score first, ties to the lower index (as rerank_cpu sorts).
        order = np.lexsort((indices, -row.astype(np.int64)))[:SCORE_TOP]
        for index in order:
            out += struct.pack("<Ii", int(index), int(row[index]))
    return bytes(out)


def predict_next_state(cell_bytes):
    alpha, shift, steps = MODELS[2]
    cells = np.frombuffer(cell_bytes, dtype="<i4").reshape(32, 32).astype(np.int32)
    with np.errstate(over="ignore"):
        for _ in range(steps):
            # Edge cells see themselves beyond the border (simulate_cpu's clamping).
            padded = np.pad(cells, 1, mode="edge")
            lap = (padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2]
                   + padded[1:-1, 2:] - cells * np.int32(4))
            cells = cells + ((lap * alpha) >> np.int32(shift))
    return cells.astype("<i4").tobytes()


KERNELS = (encode_state, score_sequence, predict_next_state)


@app.task(name="fabric_peer.run_job")
def run_job(job_type, input_bytes):
    """Runs one job: its output bytes (stored in Redis as the task's result)."""
    index = JOB_TYPES.index(job_type)
    if len(input_bytes) != INPUT_BYTES[index]:
        raise ValueError(f"{job_type} input has {len(input_bytes)} bytes")
    return KERNELS[index](input_bytes)


def read_jobs(path):
    with open(path, "rb") as file:
        data = file.read()
    (count,), at, jobs = struct.unpack_from("<I", data), 4, []
    for _ in range(count):
        kind = data[at]
        size = INPUT_BYTES[kind]
        jobs.append((JOB_TYPES[kind], data[at + 1:at + 1 + size]))
        at += 1 + size
    if at != len(data):
        raise ValueError(f"{path}: {len(data) - at} bytes after the last job")
    return jobs


def submit(jobs, threads):
    """Submits every job from `threads` threads: (async results, wall-clock submit times)."""
    results, submitted = [None] * len(jobs), [0.0] * len(jobs)

    def worker(first):
        for index in range(first, len(jobs), threads):
            submitted[index] = time.time()
            results[index] = run_job.apply_async(jobs[index])

    pool = [threading.Thread(target=worker, args=(t,)) for t in range(threads)]
    for thread in pool:
        thread.start()
    for thread in pool:
        thread.join()
    return results, submitted


def done_at(meta):
    """The wall-clock time Redis got the result (its `date_done`, UTC)."""
    return datetime.fromisoformat(meta["date_done"]).timestamp()


def drive(jobs_path, outputs_path, threads, timeout_s):
    jobs = read_jobs(jobs_path)
    started = time.time()
    results, submitted = submit(jobs, threads)
    index_of = {result.id: index for index, result in enumerate(results)}
    outputs, finished = [None] * len(jobs), [0.0] * len(jobs)
    # Polls Redis for the stored results (MGET): each carries the time it was stored.
    ids = [result.id for result in results]
    for task_id, meta in app.backend.get_many(ids, timeout=timeout_s, interval=0.01):
        index = index_of[task_id]
        if meta["status"] != "SUCCESS":
            raise RuntimeError(f"task {index} ({jobs[index][0]}): {meta['status']}: {meta.get('result')}")
        outputs[index] = meta["result"]
        finished[index] = done_at(meta)
    if any(output is None for output in outputs):
        raise RuntimeError("some results never came")
    with open(outputs_path, "wb") as file:
        for output in outputs:
            file.write(decode_result(output))
    latencies = sorted(done - sent for done, sent in zip(finished, submitted))
    json.dump({
        "jobs": len(jobs),
        "first_submitted": started,
        "last_done": max(finished),
        "latencies_s": latencies,
        "celery": __import__("celery").__version__,
        "redis_py": __import__("redis").__version__,
        "numpy": np.__version__,
    }, sys.stdout)


def decode_result(value):
    """A result as the bytes the task returned (kombu's JSON carries bytes as base64)."""
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, dict) and value.get("__type__") == "base64":
        return base64.b64decode(value["__value__"])
    raise TypeError(f"unexpected result {type(value).__name__}")


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "drive":
        sys.exit("usage: fabric_peer.py drive JOBS OUTPUTS THREADS TIMEOUT_S")
    drive(sys.argv[2], sys.argv[3], int(sys.argv[4]), float(sys.argv[5]))
