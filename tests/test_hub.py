"""Hub round trips against a real HTTP server on 127.0.0.1 with the real huggingface_hub client."""

import json
import os
import subprocess
import sys

import pytest
from hub_server import HubServer

HERE = os.path.dirname(__file__)
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    server = HubServer(str(tmp_path_factory.mktemp("hub-storage"))).start()
    yield server
    server.stop()


def client(hub, workdir, action, token="hf_alice_token", fresh_cache=True, **kwargs) -> dict:
    """Run one client action in a fresh process (and, by default, a fresh HF cache)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    home = os.path.join(workdir, f"hf-home-{len(os.listdir(workdir))}") if fresh_cache else os.path.join(workdir, "hf")
    env.update(HF_ENDPOINT=hub.endpoint, HF_HOME=home, HF_HUB_DISABLE_TELEMETRY="1", HF_HUB_DISABLE_XET="1")
    if token:
        env["HF_TOKEN"] = token
    args = [sys.executable, os.path.join(HERE, "hub_client.py"), action, str(workdir), json.dumps(kwargs)]
    done = subprocess.run(args, env=env, capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_push_then_load_in_a_fresh_process_pins_the_base_revision(hub, tmp_path):
    first = client(hub, tmp_path, "push_base", token="hf_org_token", seed=0)
    pushed = client(hub, tmp_path, "train_and_push", repo_id="alice/mask")
    assert pushed["url"].startswith(f"{hub.endpoint}/alice/mask/commit/")
    assert pushed["base_revision"] == first["commit"]

    loaded = client(hub, tmp_path, "load", token=None, repo_id="alice/mask")
    assert loaded == {"equal": True, "base_revision": first["commit"]}

    # A later commit to the base repo does not change what the mask loads.
    later = client(hub, tmp_path, "push_base", token="hf_org_token", seed=1)
    assert later["commit"] != first["commit"]
    assert client(hub, tmp_path, "load", token=None, repo_id="alice/mask") == loaded
    assert ("org/base", "model.safetensors", first["commit"]) in hub.httpd.downloads
    assert ("org/base", "model.safetensors", later["commit"]) not in hub.httpd.downloads

    sizes = client(hub, tmp_path, "repo_bytes", repo_id="alice/mask")
    assert sizes["files"] == [".gitattributes", "README.md", "mask.safetensors", "masking_config.json"]
    assert sizes["bytes"] < 0.05 * first["bytes"], (sizes, first)


def test_private_mask_needs_a_token_and_says_so(hub, tmp_path):
    client(hub, tmp_path, "push_base", token="hf_org_token", seed=0)
    client(hub, tmp_path, "train_and_push", repo_id="alice/secret", private=True)
    denied = client(hub, tmp_path, "load", token=None, repo_id="alice/secret")
    assert denied["type"] == "OSError"
    assert "alice/secret" in denied["error"] and "private" in denied["error"] and "token" in denied["error"]
    other_user = client(hub, tmp_path, "load", token="hf_bob_token", repo_id="alice/secret")
    assert "private" in other_user["error"]
    assert client(hub, tmp_path, "load", token="hf_alice_token", repo_id="alice/secret")["equal"] is True


def test_push_to_a_branch(hub, tmp_path):
    client(hub, tmp_path, "push_base", token="hf_org_token", seed=0)
    pushed = client(hub, tmp_path, "train_and_push", repo_id="alice/branchy", revision="v2")
    assert "/alice/branchy/commit/" in pushed["url"]
    assert client(hub, tmp_path, "load", repo_id="alice/branchy", revision="v2")["equal"] is True
    missing_on_main = client(hub, tmp_path, "load", repo_id="alice/branchy")
    assert missing_on_main["type"] == "MaskRepoError"
    assert "'main' is not a mask repo" in missing_on_main["error"]


def test_save_pretrained_with_push_to_hub_uploads_the_repo(hub, tmp_path):
    client(hub, tmp_path, "push_base", token="hf_org_token", seed=0)
    client(hub, tmp_path, "train_and_push", repo_id="alice/saved-and-pushed", via_save=True)
    assert sorted(os.listdir(tmp_path / "saved")) == ["README.md", "mask.safetensors", "masking_config.json"]
    assert client(hub, tmp_path, "load", token=None, repo_id="alice/saved-and-pushed")["equal"] is True
