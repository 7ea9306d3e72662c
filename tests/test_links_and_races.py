"""A save never follows a link out of the repo, a load never reads through one (but the Hub cache's own),
and a reader racing a writer gets the old or the new repo, never an error."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest
from conftest import load_quietly, save_pretrained_base
from transformers import AutoModelForSequenceClassification

from hf_masking import MaskedModel, MaskingConfig, atomic_save
from hf_masking.repo import CONFIG_NAME, WEIGHTS_NAME, read_folder


@pytest.fixture()
def two_masks(tmp_path):
    base = save_pretrained_base(tmp_path / "base")
    folders = []
    for seed in (0, 1):
        model = MaskedModel(load_quietly(AutoModelForSequenceClassification, base), MaskingConfig(seed=seed))
        model.save_pretrained(tmp_path / f"mask{seed}")
        folders.append(tmp_path / f"mask{seed}")
    return folders


def test_a_journal_that_is_a_link_is_refused_and_its_target_keeps_its_files(two_masks, tmp_path):
    first, second = two_masks
    elsewhere = tmp_path / "precious"
    elsewhere.mkdir()
    (elsewhere / "thesis.txt").write_text("years of work")
    os.symlink(elsewhere, first / atomic_save.PENDING)
    model = MaskedModel.from_pretrained(second)
    with pytest.raises(atomic_save.LinkError, match="is a symbolic link.*save journal"):
        model.save_pretrained(first)
    with pytest.raises(atomic_save.LinkError, match="symbolic link"):
        MaskedModel.from_pretrained(first)
    assert (elsewhere / "thesis.txt").read_text() == "years of work"
    assert sorted(os.listdir(elsewhere)) == ["thesis.txt"]
    os.remove(first / atomic_save.PENDING)
    (first / atomic_save.PENDING).write_text("not a folder")  # any non-folder is refused as clearly
    with pytest.raises(atomic_save.LinkError, match="not a folder"):
        model.save_pretrained(first)


def test_a_link_inside_the_journal_is_never_moved_into_the_repo(two_masks, tmp_path):
    first, second = two_masks
    journal = first / atomic_save.PENDING
    journal.mkdir()
    outside = tmp_path / "outside.json"
    outside.write_text("{}")
    os.symlink(outside, journal / CONFIG_NAME)
    with pytest.raises(atomic_save.LinkError, match="symbolic link"):
        MaskedModel.from_pretrained(first)  # not read through it either
    with pytest.raises(atomic_save.LinkError, match="not a plain file"):
        MaskedModel.from_pretrained(second).save_pretrained(first)
    assert outside.read_text() == "{}" and os.path.islink(journal / CONFIG_NAME)


def test_repo_files_that_are_links_are_not_read(two_masks, tmp_path):
    first, second = two_masks
    os.remove(first / WEIGHTS_NAME)
    os.symlink(second / WEIGHTS_NAME, first / WEIGHTS_NAME)
    with pytest.raises(atomic_save.LinkError, match=f"{WEIGHTS_NAME} is a symbolic link"):
        MaskedModel.from_pretrained(first)
    os.remove(first / CONFIG_NAME)
    os.symlink(second / CONFIG_NAME, first / CONFIG_NAME)
    with pytest.raises(atomic_save.LinkError, match=f"{CONFIG_NAME} is a symbolic link"):
        MaskedModel.from_pretrained(first)
    # The Hub cache's snapshot files are links to its blobs: read through, as huggingface_hub made them.
    assert read_folder(str(first), follow_links=True).record == read_folder(str(second)).record


WRITER = """
import sys, time
from hf_masking import atomic_save
folder, a, b, seconds = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4])
sets = [{n: open(f"{d}/{n}", "rb").read() for n in ("masking_config.json", "mask.safetensors")} for d in (a, b)]
end, i = time.monotonic() + seconds, 0
print("ready", flush=True)
while time.monotonic() < end:
    atomic_save.save_files(folder, sets[i % 2])
    i += 1
print(i, flush=True)
"""


def test_a_reader_racing_a_writer_gets_the_old_or_the_new_repo(two_masks, tmp_path):
    first, second = two_masks
    folder = tmp_path / "busy"
    atomic_save.save_files(str(folder), {n: (first / n).read_bytes() for n in (CONFIG_NAME, WEIGHTS_NAME)})
    expected = {read_folder(str(d)).record["weights_sha256"] for d in two_masks}
    assert len(expected) == 2
    writer = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(folder), str(first), str(second), "5"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert writer.stdout.readline().strip() == "ready"
        reads, start = 0, time.monotonic()
        while reads < 200 and time.monotonic() - start < 4.5:
            stored = read_folder(str(folder))  # raises on a mismatched pair: the bug this guards against
            assert stored.record["weights_sha256"] in expected
            reads += 1
        saves = int(writer.communicate(timeout=60)[0].strip())
    finally:
        writer.kill()
    assert reads >= 50 and saves >= 50, (reads, saves)
