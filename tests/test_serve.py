"""`hf-masking serve`: answers equal to each mask alone under load, limits that hold against hostile
clients with the server still serving, metrics, run-time tasks behind an admin token, generation,
and the Ray Serve deployment. Every server is a real process on 127.0.0.1."""

from __future__ import annotations

import http.client
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch
from conftest import load_quietly
from distributed_utils import free_port
from script_utils import ROOT, WORDS, save_tiny_decoder, save_tiny_model
from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, AutoTokenizer

from hf_masking import MaskedModel, MaskingConfig

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

spec = importlib.util.spec_from_file_location("serve_load", os.path.join(ROOT, "bench", "serve_load.py"))
serve_load = importlib.util.module_from_spec(spec)
spec.loader.exec_module(serve_load)

TASKS = {"sentiment": (2, 0), "topic": (2, 1), "question": (6, 2)}  # labels, seed
ADMIN_TOKEN = "test-admin-token-0123456789"


def _get(url: str) -> tuple[int, bytes, dict]:
    try:
        with urllib.request.urlopen(url, timeout=30) as response:
            return response.status, response.read(), dict(response.headers)
    except urllib.error.HTTPError as err:
        return err.code, err.read(), dict(err.headers)


def _request(url: str, method: str, body: dict | None = None, token: str | None = None) -> tuple[int, dict]:
    headers = {"content-type": "application/json"}
    if token:
        headers["authorization"] = f"Bearer {token}"
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read() or b"{}")


def _raw(port: int, body: bytes, headers: dict[str, str], path: str = "/predict") -> tuple[int, bytes]:
    """A request exactly as given (any body, any headers), for what a JSON client cannot send."""
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        connection.putrequest("POST", path)
        for key, value in headers.items():
            connection.putheader(key, value)
        connection.endheaders()
        try:
            connection.send(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # refused before the body was read: the status is still there to read
        response = connection.getresponse()
        return response.status, response.read()
    finally:
        connection.close()


def _start(masks: dict[str, str], *flags: str, env: dict[str, str] | None = None) -> tuple[str, int, subprocess.Popen]:
    port = free_port()
    process = serve_load.start_server(masks, port, *flags, env=env)
    url = f"http://127.0.0.1:{port}"
    try:
        serve_load.wait_ready(url, process, timeout=240)
    except BaseException:
        _stop(process)
        raise
    return url, port, process


def _stop(process: subprocess.Popen) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def _save_masks(root, base: str) -> dict[str, str]:
    masks = {}
    for task, (labels, seed) in TASKS.items():
        torch.manual_seed(seed)
        head = load_quietly(AutoModelForSequenceClassification, base, num_labels=labels)
        MaskedModel(head, MaskingConfig(initial_sparsity=0.3, seed=seed)).save_pretrained(root / task)
        masks[task] = str(root / task)
    return masks


class Alone:
    """Each mask computing alone: what every server answer must equal."""

    def __init__(self, base: str, masks: dict[str, str]) -> None:
        self.tokenizer = AutoTokenizer.from_pretrained(base)
        self.models = {task: MaskedModel.from_pretrained(repo) for task, repo in masks.items()}

    def logits(self, task: str, text: str, pair: str | None = None) -> torch.Tensor:
        with torch.no_grad():
            return self.models[task](**self.tokenizer(text, pair, truncation=True, return_tensors="pt")).logits[0]

    def check(self, body: dict, answer: dict) -> None:
        expected = self.logits(body["task"], body["text"], body.get("text_pair"))
        assert answer["task"] == body["task"]
        torch.testing.assert_close(torch.tensor(answer["logits"]), expected, atol=1e-5, rtol=0)
        assert answer["label"] == f"LABEL_{int(expected.argmax())}"


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory):
    root = tmp_path_factory.mktemp("serve")
    base = save_tiny_model(root / "base")
    masks = _save_masks(root, base)
    (root / "token").write_text(ADMIN_TOKEN)
    return root, base, masks


@pytest.fixture(scope="module")
def server(classifiers):
    root, base, masks = classifiers
    flags = ["--admin_token_file", str(root / "token"), "--allowed_root", str(root / "extra"), "--max_texts", "8"]
    url, port, process = _start(masks, *flags, "--max_wait_ms", "5")
    try:
        yield url, port, process, Alone(base, masks)
    finally:
        _stop(process)


def test_load_1000_requests_32_concurrent_all_answered_as_each_mask_alone(server):
    url, _, _, alone = server
    bodies = serve_load.random_bodies(list(TASKS), 1000)
    result = serve_load.run_load(url, bodies, concurrency=32)
    print(
        f"\nload: {result['requests']} requests, 32 concurrent: {result['throughput']:.0f} req/s, "
        f"p50 {result['p50_ms']:.1f} ms, p99 {result['p99_ms']:.1f} ms, errors {result['errors']}"
    )
    assert result["errors"] == {}
    for index in random.Random(0).sample(range(len(bodies)), 60):
        alone.check(bodies[index], result["answers"][index][1])
    # Concurrent requests for different tasks were answered in shared, mixed-mask forwards.
    assert max(answer["batch"]["tasks"] for _, answer in result["answers"]) >= 2


def test_batch_texts_pairs_and_cut_texts(server):
    url, _, _, alone = server
    texts, pairs = ["a good film", "the plot was dull", "bob runs"], ["it was fine", "awful", "then she sits"]
    status, answer = _request(f"{url}/predict", "POST", {"task": "question", "texts": texts, "text_pairs": pairs})
    assert status == 200 and len(answer["predictions"]) == 3
    for text, pair, prediction in zip(texts, pairs, answer["predictions"], strict=True):
        alone.check({"task": "question", "text": text, "text_pair": pair}, prediction)
    # A text over max_chars is cut there before tokenization (then truncated to the model's length).
    long_text = "good " * 5000
    status, answer = _request(f"{url}/predict", "POST", {"task": "topic", "text": long_text})
    assert status == 200 and answer["cut"] is True
    alone.check({"task": "topic", "text": long_text[:10_000]}, answer)


HOSTILE = [  # (what, body bytes, expected status)
    ("text_pair NaN", b'{"task": "sentiment", "text": "a film", "text_pair": NaN}', 422),
    ("text is a number", b'{"task": "sentiment", "text": 5}', 422),
    ("no task", b'{"text": "a film"}', 422),
    ("text and texts", b'{"task": "topic", "text": "a", "texts": ["b"]}', 422),
    ("empty texts", b'{"task": "topic", "texts": []}', 422),
    ("pairs for other texts", b'{"task": "topic", "texts": ["a", "b"], "text_pairs": ["c"]}', 422),
    ("unknown field", b'{"task": "topic", "text": "a", "eval": "__import__(\'os\')"}', 422),
    ("not JSON", b"task=topic&text=a", 422),
    ("not UTF-8", b'{"task": "topic", "text": "\xff\xfe"}', 400),
    ("a JSON array", b"[1, 2, 3]", 422),
    ("nested 100k deep", b"[" * 100_000 + b"]" * 100_000, 400),
    ("9 texts, 8 allowed", json.dumps({"task": "topic", "texts": ["a"] * 9}).encode(), 413),
    ("2 MiB body", json.dumps({"task": "topic", "text": "a" * (2 << 20)}).encode(), 413),
    ("unknown task", b'{"task": "nope", "text": "a film"}', 404),
    ("task name 1 MB", json.dumps({"task": "x" * 900_000, "text": "a"}).encode(), 404),
]


def test_hostile_requests_get_4xx_and_the_server_stays_up_within_1_5x_idle_rss(server):
    url, port, process, alone = server
    for _ in range(3):  # warm: the first requests allocate what every later one reuses
        serve_load.run_load(url, serve_load.random_bodies(list(TASKS), 64), concurrency=8)
    sampler = serve_load.RssSampler(process.pid)
    idle = sampler.now()
    statuses = {}
    with sampler:
        for what, body, expected in HOSTILE:
            status, text = _raw(port, body, {"content-type": "application/json", "content-length": str(len(body))})
            statuses[what] = status
            assert status == expected, (what, status, text[:300])
            assert text and json.loads(text)["detail"], what  # a message, in JSON
        # A body streamed without a length, over the limit: refused as it arrives.
        chunked = {"content-type": "application/json", "transfer-encoding": "chunked"}
        piece = b"a" * 65536
        stream = b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for _ in range(20)) + b"0\r\n\r\n"
        statuses["1.25 MiB chunked"] = _raw(port, stream, chunked)[0]
        assert statuses["1.25 MiB chunked"] == 413
        statuses["Content-Length not a number"] = _raw(port, b"{}", {"content-length": "abc"})[0]
        assert statuses["Content-Length not a number"] == 400
        # The report's OOM: a text and a pair of 50,000 words each, concurrently, cut at max_chars.
        words = " ".join(random.Random(0).choice(WORDS) for _ in range(50_000))
        huge = {"task": "sentiment", "text": words, "text_pair": words}
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(lambda _: _request(f"{url}/predict", "POST", huge), range(8)))
        assert all(status == 200 and answer["cut"] for status, answer in answers)
        statuses["50,000-word pair x8"] = 200
        alone.check({**huge, "text": words[:10_000], "text_pair": words[:10_000]}, answers[0][1])
        status, answer = _request(f"{url}/generate", "POST", {"task": "topic", "prompt": "a"})
        assert status == 422 and "/predict" in answer["detail"]
        status, _ = _request(f"{url}/generate", "POST", {"task": "topic", "prompt": "a", "max_new_tokens": 0})
        assert status == 422
    print(f"\nhostile: {statuses}; RSS idle {idle / 2**20:.0f} MB, peak {sampler.peak / 2**20:.0f} MB")
    assert sampler.peak <= 1.5 * idle
    assert process.poll() is None
    body = {"task": "sentiment", "text": "a good film"}
    status, answer = _request(f"{url}/predict", "POST", body)
    assert status == 200
    alone.check(body, answer)
    assert _get(f"{url}/health")[0] == 200 and _get(f"{url}/ready")[0] == 200


def test_metrics_in_prometheus_format(server):
    url, _, _, _ = server
    _request(f"{url}/predict", "POST", {"task": "topic", "text": "a fine story"})
    _request(f"{url}/predict", "POST", {"task": "no-such-task", "text": "a"})
    status, text, headers = _get(f"{url}/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain")
    from prometheus_client.parser import text_string_to_metric_families

    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text.decode())
        for sample in family.samples
    }

    def value(name: str, **labels: str) -> float:
        return samples.get((name, tuple(sorted(labels.items()))), 0.0)

    assert value("hf_masking_requests_total", endpoint="/predict", task="topic", status="200") >= 1
    assert value("hf_masking_request_errors_total", endpoint="/predict", task="-", status="404") >= 1
    assert not any(dict(labels).get("task") == "no-such-task" for _, labels in samples)  # bounded labels
    assert value("hf_masking_request_latency_seconds_count", endpoint="/predict") >= 1
    assert value("hf_masking_batch_rows_count") >= 1 and value("hf_masking_batch_masks_count") >= 1
    assert value("hf_masking_loaded_masks") == 3
    assert value("hf_masking_mask_cache_bytes") > 0  # the masks in use were decoded and cached
    assert ("hf_masking_queue_depth", ()) in samples


def test_tasks_added_and_removed_at_run_time_only_with_the_admin_token(server, classifiers):
    url, _, _, alone = server
    root, base, masks = classifiers
    extra = root / "extra"
    shutil.copytree(masks["question"], extra / "question2")
    spec = {"repo": str(extra / "question2")}
    assert _request(f"{url}/tasks/q2", "PUT", spec)[0] == 401
    assert _request(f"{url}/tasks/q2", "PUT", spec, token="wrong-token-wrong-token")[0] == 401
    assert _request(f"{url}/tasks/topic", "DELETE", token="wrong-token-wrong-token")[0] == 401
    status, answer = _request(f"{url}/tasks/q2", "PUT", {"repo": masks["question"]}, token=ADMIN_TOKEN)
    assert status == 403 and "allowed root" in answer["detail"]  # a folder outside --allowed_root
    (extra / "broken").mkdir()
    (extra / "broken" / "masking_config.json").write_text("{not json")
    status, answer = _request(f"{url}/tasks/bad", "PUT", {"repo": str(extra / "broken")}, token=ADMIN_TOKEN)
    assert status in (404, 422) and "broken" in answer["detail"]
    assert _request(f"{url}/tasks/bad%20name", "PUT", spec, token=ADMIN_TOKEN)[0] == 422
    assert _request(f"{url}/tasks/topic", "PUT", spec, token=ADMIN_TOKEN)[0] == 409

    status, answer = _request(f"{url}/tasks/q2", "PUT", spec, token=ADMIN_TOKEN)
    assert status == 200 and len(answer["labels"]) == 6
    body = {"task": "q2", "text": "alice was great"}
    status, answer = _request(f"{url}/predict", "POST", body)
    assert status == 200
    alone.check({**body, "task": "question"}, {**answer, "task": "question"})  # the same mask as "question"
    assert _request(f"{url}/tasks/q2", "DELETE", token=ADMIN_TOKEN) == (200, {"removed": "q2"})
    assert _request(f"{url}/predict", "POST", body)[0] == 404
    assert _request(f"{url}/tasks/q2", "DELETE", token=ADMIN_TOKEN)[0] == 404
    status, answer = _request(f"{url}/predict", "POST", {"task": "question", "text": "alice was great"})
    assert status == 200  # every other task kept serving


def test_full_queue_is_503_with_retry_after_and_a_late_answer_504(classifiers):
    """Rows wait 0.8 s for a batch to fill, answers are due in 0.5 s, and the queue holds 2 rows."""
    root, base, masks = classifiers
    flags = ["--max_queue", "2", "--max_texts", "2", "--max_wait_ms", "800", "--request_timeout_s", "0.5"]
    url, port, process = _start({"topic": masks["topic"]}, *flags)
    try:
        body = json.dumps({"task": "topic", "texts": ["a good film", "bad"]}).encode()

        def send(_):
            connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            connection.request("POST", "/predict", body, {"content-type": "application/json"})
            response = connection.getresponse()
            return response.status, response.getheader("retry-after"), json.loads(response.read())

        with ThreadPoolExecutor(3) as pool:
            results = list(pool.map(send, range(3)))
        assert sorted(status for status, _, _ in results) == [503, 503, 504], results
        assert all(retry == "1" and "busy" in answer["detail"] for status, retry, answer in results if status == 503)
        assert _request(f"{url}/tasks/x", "PUT", {"repo": masks["topic"]}, token=ADMIN_TOKEN)[0] == 403  # admin off
        time.sleep(1)  # the timed-out rows leave the queue when the worker passes them
        assert _get(f"{url}/health")[0] == 200 and _get(f"{url}/ready")[0] == 200 and process.poll() is None
        status, text, _ = _get(f"{url}/metrics")
        assert b'hf_masking_request_errors_total{endpoint="/predict",status="503",task="topic"} 2.0' in text
        assert b"hf_masking_queue_depth 0.0" in text
    finally:
        _stop(process)


def test_generation_batched_across_tasks_equals_each_mask_alone(tmp_path):
    base = save_tiny_decoder(tmp_path / "decoder")
    masks = {}
    for seed in (0, 1):
        model = load_quietly(AutoModelForCausalLM, base)
        MaskedModel(model, MaskingConfig(initial_sparsity=0.3, seed=seed)).save_pretrained(tmp_path / f"gen{seed}")
        masks[f"gen{seed}"] = str(tmp_path / f"gen{seed}")
    url, _, process = _start(masks, "--max_new_tokens", "6", "--max_wait_ms", "400")
    try:
        status, tasks = _request(f"{url}/tasks", "GET")
        assert tasks == {"gen0": {"kind": "generation", "labels": []}, "gen1": {"kind": "generation", "labels": []}}
        prompts = ["alice runs then bob", "paris sits then he", "she jumps then acme", "bob ends then alice"]
        bodies = [{"task": f"gen{i % 2}", "prompt": p, "max_new_tokens": 4 + i} for i, p in enumerate(prompts)]
        with ThreadPoolExecutor(len(bodies)) as pool:
            answers = list(pool.map(lambda body: _request(f"{url}/generate", "POST", body), bodies))
        tokenizer = AutoTokenizer.from_pretrained(base)
        for body, (status, answer) in zip(bodies, answers, strict=True):
            assert status == 200
            granted = min(body["max_new_tokens"], 6)
            assert answer["max_new_tokens"] == granted and answer["capped"] == (body["max_new_tokens"] > 6)
            model = MaskedModel.from_pretrained(masks[body["task"]])
            inputs = tokenizer(body["prompt"], return_tensors="pt")
            expected = model.generate(**inputs, max_new_tokens=granted, do_sample=False, pad_token_id=0)
            expected = expected[0, inputs["input_ids"].shape[1] :].tolist()
            assert answer["tokens"] == expected[: len(answer["tokens"])] and len(answer["tokens"]) <= granted
        assert max(answer["batch"]["tasks"] for _, answer in answers) == 2  # both masks in one generate
        assert _request(f"{url}/predict", "POST", {"task": "gen0", "text": "a"})[0] == 422
    finally:
        _stop(process)


def test_bad_flags_are_refused_at_start_up(tmp_path):
    for flags, message in [
        (["--mask", "nameonly"], "NAME=REPO"),
        (["--mask", "a=x", "--max_texts", "0"], "must be > 0"),
        (["--mask", "a=x", "--max_wait_ms", "nan"], "must be >= 0"),
        (["--mask", "a=x", "--mask", "a=y"], "twice"),
        (["--mask", "bad name=x"], "task name"),
    ]:
        result = subprocess.run(
            [sys.executable, "-m", "hf_masking", "serve", *flags], capture_output=True, text=True, timeout=120
        )
        assert result.returncode != 0 and message in result.stderr, (flags, result.stderr[-500:])


def test_ray_serve_two_replicas_batch_across_tasks_and_answer_as_each_mask_alone(classifiers):
    pytest.importorskip("ray.serve")
    root, base, masks = classifiers
    flags = ["--ray", "--replicas", "2", "--replica_cpus", "0.5", "--max_wait_ms", "20", "--max_texts", "8"]
    url, port, process = _start(masks, *flags)
    try:
        alone = Alone(base, masks)
        bodies = serve_load.random_bodies(list(TASKS), 120, seed=3)
        result = serve_load.run_load(url, bodies, concurrency=24)
        assert result["errors"] == {}
        for index in random.Random(1).sample(range(len(bodies)), 20):
            alone.check(bodies[index], result["answers"][index][1])
        answers = [answer for _, answer in result["answers"]]
        assert len({answer["batch"]["replica"] for answer in answers}) == 2
        assert max(answer["batch"]["tasks"] for answer in answers) >= 2  # @serve.batch mixed tasks in one forward
        assert _request(f"{url}/predict", "POST", {"task": "topic", "texts": ["a"] * 9})[0] == 413
        assert _request(f"{url}/tasks/x", "PUT", {"repo": masks["topic"]}, token=ADMIN_TOKEN)[0] == 403
        assert _get(f"{url}/metrics")[0] == 200
    finally:
        _stop(process)


def test_sync_tasks_loads_what_is_new_and_drops_what_is_gone(classifiers):
    """What a Ray replica's `reconfigure` does with a new user_config, in process."""
    from hf_masking.serve import MaskService, ServeSettings

    root, base, masks = classifiers
    service = MaskService.load(ServeSettings(tasks={"topic": masks["topic"], "sentiment": masks["sentiment"]}))
    service.sync_tasks({"topic": masks["topic"], "question": masks["question"]})
    assert sorted(service.tasks) == ["question", "topic"] and service.tasks["question"].labels[5] == "LABEL_5"
    service.sync_tasks({"topic": masks["question"]})  # another repo under the same name: reloaded
    assert list(service.tasks) == ["topic"] and len(service.tasks["topic"].labels) == 6
    from hf_masking.serve.service import Row

    (answer,) = service.answer([Row("topic", "alice was great")])
    Alone(base, masks).check({"task": "question", "text": "alice was great"}, {**answer, "task": "question"})


PUSH = """
import sys
from hf_masking import MaskedModel
MaskedModel.from_pretrained(sys.argv[1]).push_to_hub(sys.argv[2])
"""


def test_a_task_added_at_run_time_from_a_hub_repo_id(classifiers, tmp_path):
    """PUT /tasks/{name} with a Hub id: the server downloads and checks it like any repo (a local Hub on
    127.0.0.1, the real huggingface_hub client)."""
    from hub_server import HubServer

    root, base, masks = classifiers
    hub = HubServer(str(tmp_path / "hub")).start()
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env.update(HF_ENDPOINT=hub.endpoint, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    try:
        pushed = subprocess.run(
            [sys.executable, "-c", PUSH, masks["question"], "alice/question-mask"],
            env={**env, "HF_HOME": str(tmp_path / "pusher"), "HF_TOKEN": "hf_alice_token"},
            capture_output=True, text=True, timeout=180,
        )  # fmt: skip
        assert pushed.returncode == 0, pushed.stderr[-2000:]
        server_env = {**env, "HF_HOME": str(tmp_path / "server-cache")}
        url, _, process = _start({"topic": masks["topic"]}, "--admin_token_file", str(root / "token"), env=server_env)
        try:
            status, answer = _request(f"{url}/tasks/q", "PUT", {"repo": "alice/question-mask"}, token=ADMIN_TOKEN)
            assert status == 200 and len(answer["labels"]) == 6, answer
            status, answer = _request(f"{url}/tasks/x", "PUT", {"repo": "alice/no-such-mask"}, token=ADMIN_TOKEN)
            assert status in (404, 422) and "no-such-mask" in answer["detail"]
            body = {"task": "q", "text": "bob was lovely"}
            status, answer = _request(f"{url}/predict", "POST", body)
            assert status == 200
            Alone(base, masks).check({**body, "task": "question"}, {**answer, "task": "question"})
        finally:
            _stop(process)
    finally:
        hub.stop()


def test_the_ray_serve_run_target_takes_the_serve_flags_as_key_value(tmp_path):
    pytest.importorskip("ray.serve")
    from ray.serve import Application

    from hf_masking.serve.ray_deployment import app_builder

    app = app_builder({"mask": f"a={tmp_path / 'a'},b={tmp_path / 'b'}", "replicas": "2", "max_batch": "8"})
    assert isinstance(app, Application)
    with pytest.raises(SystemExit):
        app_builder({"mask": "a=x", "max_batch": "0"})  # checked as the command line checks it
    with pytest.raises(ValueError, match="twice"):
        app_builder({"mask": "a=x,a=y"})
