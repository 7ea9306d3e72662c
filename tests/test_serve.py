"""The example server (examples/serve.py): concurrent requests for different tasks, batched together,
each answered as its own mask answers alone."""

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import load_quietly
from distributed_utils import free_port
from script_utils import ROOT, WORDS, save_tiny_model
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from hf_masking import MaskedModel, MaskingConfig

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")

TASKS = {"sentiment": (2, 0), "topic": (2, 1), "question": (6, 2)}  # labels, seed


def _post(url: str, body: dict) -> dict:
    request = urllib.request.Request(url, json.dumps(body).encode(), {"content-type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        return json.loads(response.read())


@pytest.fixture()
def server(tmp_path):
    base = save_tiny_model(tmp_path / "base")
    for task, (labels, seed) in TASKS.items():
        torch.manual_seed(seed)
        head = load_quietly(AutoModelForSequenceClassification, base, num_labels=labels)
        MaskedModel(head, MaskingConfig(initial_sparsity=0.3, seed=seed)).save_pretrained(tmp_path / task)
    port = free_port()
    command = [sys.executable, os.path.join(ROOT, "examples", "serve.py"), "--port", str(port), "--max_wait_ms", "400"]
    command += [arg for task in TASKS for arg in ("--mask", f"{task}={tmp_path / task}")]
    process = subprocess.Popen(command, stderr=subprocess.PIPE, text=True, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(600):
            if process.poll() is not None:
                pytest.fail(f"the server exited: {process.stderr.read()}")
            try:
                with urllib.request.urlopen(f"{url}/tasks", timeout=5) as response:
                    assert json.loads(response.read())["question"]["labels"][5] == "LABEL_5"
                break
            except (urllib.error.URLError, ConnectionError):
                time.sleep(0.1)
        yield url, tmp_path
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)


def test_concurrent_requests_for_different_tasks_are_batched_and_each_gets_its_own_answer(server):
    url, root = server
    rng = random.Random(0)
    requests = [
        {"task": task, "text": " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 9)))}
        for task in list(TASKS) * 4
    ]
    start = threading.Barrier(len(requests))

    def send(body):
        start.wait()
        return _post(f"{url}/predict", body)

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(send, requests))

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    alone = {task: MaskedModel.from_pretrained(root / task) for task in TASKS}
    for body, answer in zip(requests, answers, strict=True):
        with torch.no_grad():
            expected = alone[body["task"]](**tokenizer(body["text"], return_tensors="pt")).logits[0]
        assert answer["task"] == body["task"] and len(answer["logits"]) == TASKS[body["task"]][0]
        torch.testing.assert_close(torch.tensor(answer["logits"]), expected, atol=1e-5, rtol=0)
        assert answer["label"] == f"LABEL_{int(expected.argmax())}"
    # The two 2-label tasks shared forwards; the 6-label one has its own head shape, so its own forward.
    assert max(a["batch"]["tasks"] for a in answers if a["task"] != "question") == 2
    assert all(a["batch"]["tasks"] == 1 for a in answers if a["task"] == "question")

    with pytest.raises(urllib.error.HTTPError) as error:
        _post(f"{url}/predict", {"task": "nope", "text": "a film"})
    assert error.value.code == 404 and "sentiment" in error.value.read().decode()
