"""Saves are atomic as a whole: interrupted at any step, a folder holds the complete old or new repo."""

import json
import os
import subprocess
import sys

import pytest
from conftest import load_quietly, save_pretrained_base
from repo_tools import os_stopping_at
from transformers import AutoModelForSequenceClassification

from hf_masking import MaskedModel, MaskingConfig, atomic_save
from hf_masking.model_card import GENERATED_MARKER

HERE = os.path.dirname(__file__)
OLD = {"masking_config.json": b"old config", "mask.safetensors": b"old weights", "README.md": b"old card"}
NEW = {"masking_config.json": b"new config", "mask.safetensors": b"new weights", "README.md": b"new card"}


def current(folder) -> dict:
    return {name: atomic_save.read_current(str(folder), name) for name in OLD}


class Interrupted(BaseException):
    """Stands for KeyboardInterrupt: a BaseException that no `except Exception` catches."""


def interrupt(name: str) -> None:
    raise Interrupted(name)


def test_an_exception_at_any_step_leaves_the_old_or_the_new_files(tmp_path, monkeypatch):
    states = []
    for at in range(1, 100):
        folder = tmp_path / f"at-{at}"
        atomic_save.save_files(str(folder), OLD)
        (folder / "user-file.txt").write_text("mine")
        monkeypatch.setattr(atomic_save, "os", os_stopping_at(at, interrupt))
        try:
            atomic_save.save_files(str(folder), NEW)
            finished = True
        except Interrupted:
            finished = False
        monkeypatch.setattr(atomic_save, "os", os)
        state = current(folder)
        assert state in (OLD, NEW), (at, state)
        states.append("new" if state == NEW else "old")
        atomic_save.save_files(str(folder), {**NEW, "README.md": b"newer card"})
        assert [f for f in os.listdir(folder) if f.startswith(".hf-masking")] == []
        assert (folder / "user-file.txt").read_text() == "mine"
        assert current(folder)["README.md"] == b"newer card"
        if finished:
            break
    assert finished and "old" in states and "new" in states
    # Before the commit the old files are what is there; after it, the new ones, never back.
    assert states == sorted(states, key=lambda s: s == "new")


@pytest.mark.slow
def test_sigkill_at_every_step_of_a_save_leaves_a_loadable_old_or_new_repo(tmp_path):
    done = subprocess.run(
        [sys.executable, os.path.join(HERE, "kill_during_save.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    steps = report["steps"]
    assert report["completed_at"] > 10  # every write, fsync and rename of the save was a kill point
    assert all(step["killed"] for step in steps[:-1])
    assert {step["state"] for step in steps} == {"old", "new"}, steps
    assert [s["state"] for s in steps] == sorted((s["state"] for s in steps), key=lambda s: s == "new")
    assert any(step["leftovers"] for step in steps)  # some kills did leave a staging or pending folder…
    assert all(step["leftovers_after_next_save"] == [] for step in steps)  # …which the next save removed
    assert all(step["tokenizer_kept"] for step in steps)


def test_save_targets_that_cannot_be_folders_are_refused(tmp_path):
    base = load_quietly(AutoModelForSequenceClassification, save_pretrained_base(tmp_path / "base"), num_labels=2)
    model = MaskedModel(base, MaskingConfig())
    with pytest.raises(ValueError, match="save_directory must name a folder, not ''"):
        model.save_pretrained("")
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(NotADirectoryError, match="it is a file, not a folder"):
        model.save_pretrained(tmp_path / "a-file")
    with pytest.raises(ValueError, match="safetensors only"):
        model.save_pretrained(tmp_path / "m", safe_serialization=False)
    with pytest.raises(TypeError, match="unexpected keyword arguments \\['repo_id'\\]"):
        model.save_pretrained(tmp_path / "m", repo_id="me/mask")


def test_a_users_readme_is_kept_and_only_gets_the_metadata(tmp_path):
    base = load_quietly(AutoModelForSequenceClassification, save_pretrained_base(tmp_path / "base"), num_labels=2)
    model = MaskedModel(base, MaskingConfig())
    folder = tmp_path / "mask"
    folder.mkdir()
    mine = "---\nlicense: mit\ntags:\n- sentiment\n---\n# My sentiment mask\n\nTrained on my data, read this first.\n"
    (folder / "README.md").write_text(mine)
    model.save_pretrained(folder)
    card = (folder / "README.md").read_text()
    assert "# My sentiment mask\n\nTrained on my data, read this first." in card
    assert "license: mit" in card and "library_name: hf-masking" in card
    assert "- sentiment" in card and "- hf-masking" in card and GENERATED_MARKER not in card
    model.save_pretrained(folder)
    assert (folder / "README.md").read_text() == card  # stable: the metadata is added once

    generated = tmp_path / "generated"
    model.save_pretrained(generated)
    assert GENERATED_MARKER in (generated / "README.md").read_text()
    (generated / "README.md").write_text((generated / "README.md").read_text() + "\nstale\n")
    model.save_pretrained(generated)
    assert "stale" not in (generated / "README.md").read_text()  # our own card is rewritten

    (folder / "README.md").write_bytes(b"\xff\xfe not utf-8")
    model.save_pretrained(folder)
    assert (folder / "README.md").read_bytes() == b"\xff\xfe not utf-8"
