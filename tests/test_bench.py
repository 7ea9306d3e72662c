"""The accuracy benchmark's search and report logic, on synthetic scores (no training)."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import pytest

BENCH = os.path.join(os.path.dirname(__file__), "..", "bench")
sys.path.insert(0, BENCH)  # as when the scripts run: report.py imports from accuracy.py beside it


def load(name: str):
    spec = importlib.util.spec_from_file_location(f"bench_{name}", os.path.join(BENCH, f"{name}.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


accuracy = load("accuracy")


def peaked_at(best_lr: float):
    """A fake run whose dev score is highest at best_lr and falls off with log distance."""
    calls = []

    def run(task: str, method: str, lr: float, seed: int) -> dict:
        calls.append((lr, seed))
        return {"value": 1.0 - abs(math.log2(lr / best_lr)) / 10, "learning_rate": lr, "seed": seed}

    return run, calls


def test_search_extends_the_grid_until_the_best_rate_is_interior():
    preset = dict(accuracy.PRESETS["cpu"], seeds=[0, 1], max_extensions=3)
    centre = accuracy.CENTRES["sst2"]["masking"]
    run, calls = peaked_at(centre * 8)  # two doublings past the starting grid's top
    accuracy.search("sst2", "masking", preset, run)
    seed0 = sorted(lr for lr, seed in calls if seed == 0)
    assert seed0 == pytest.approx([centre / 2, centre, centre * 2, centre * 4, centre * 8, centre * 16])
    best = max(seed0, key=lambda lr: -abs(math.log2(lr / (centre * 8))))
    assert seed0[0] < best < seed0[-1]
    assert [(lr, seed) for lr, seed in calls if seed == 1] == [(pytest.approx(centre * 8), 1)]


def test_search_extends_downwards_and_stops_after_max_extensions():
    preset = dict(accuracy.PRESETS["cpu"], seeds=[0, 1], max_extensions=2)
    centre = accuracy.CENTRES["conll2003"]["lora"]
    run, calls = peaked_at(centre / 1000)
    accuracy.search("conll2003", "lora", preset, run)
    seed0 = sorted(lr for lr, seed in calls if seed == 0)
    assert seed0 == pytest.approx([centre / 8, centre / 4, centre / 2, centre, centre * 2])
    assert [seed for _, seed in calls].count(1) == 1


def test_recorded_runs_are_reused_only_for_the_same_setup():
    setup = accuracy.setup_of("mrpc", "lora", accuracy.PRESETS["cpu"])
    record = {"task": "mrpc", "method": "lora", "seed": 0, "learning_rate": 0.001, "setup": setup}
    assert accuracy.recorded([record], "mrpc", "lora", 1e-3, 0, setup) is record
    assert accuracy.recorded([record], "mrpc", "lora", 2e-3, 0, setup) is None
    assert accuracy.recorded([record], "mrpc", "lora", 1e-3, 1, setup) is None
    other = accuracy.setup_of("mrpc", "lora", accuracy.PRESETS["gpu"])
    assert accuracy.recorded([record], "mrpc", "lora", 1e-3, 0, other) is None
    assert "group_by_length" in setup["args"] and "--lora_r" in setup["args"]


def fake_record(task, method, lr, seed, value, nbytes):
    return {
        "task": task,
        "method": method,
        "seed": seed,
        "learning_rate": lr,
        "metric": "accuracy",
        "value": value,
        "majority_baseline": 0.5,
        "trainable_params": 10,
        "bytes_stored": nbytes,
        "step_time_s": 0.1,
        "peak_rss_mb": 100.0,
        "train_samples": 100,
        "eval_samples": 50,
        "epochs": 1,
        "wall_s": 30.0,
    }


def test_report_picks_the_first_seeds_best_rate_and_checks_the_bar():
    report = load("report")
    records = [
        fake_record("sst2", "masking", 1e-3, 0, 0.70, 300_000),
        fake_record("sst2", "masking", 2e-3, 0, 0.80, 300_000),
        fake_record("sst2", "masking", 4e-3, 0, 0.75, 300_000),
        fake_record("sst2", "masking", 2e-3, 1, 0.78, 300_000),
        fake_record("sst2", "finetuning", 1e-4, 0, 0.82, 90_000_000),
        fake_record("sst2", "finetuning", 1e-4, 1, 0.80, 90_000_000),
    ]
    table = report.summarize(records)
    masking = table[("sst2", "masking")]
    assert masking["lr"] == 2e-3 and masking["grid"] == [1e-3, 2e-3, 4e-3]
    assert masking["mean"] == pytest.approx(79.0) and masking["seeds"] == 2
    gap = masking["mean"] - table[("sst2", "finetuning")]["mean"]
    (line,) = report.bar_lines(table, [gap])
    assert "-2.00 points** (not met)" in line and "1/300" in line and "(met)" in line
    section = "\n".join(report.accuracy_section("cpu", table))
    assert "79.0 ± 1.4 (lr 0.002)" in section and "†" not in section
    assert "6 runs took 3 min" in section
    assert "| -2.0 ± 1.4 |" in section  # standard error of the difference: sqrt(2/2 + 2/2)


def test_report_shows_no_spread_for_a_single_seed():
    report = load("report")
    records = [
        fake_record("mrpc", "masking", 8e-3, 0, 0.821, 300_000),
        fake_record("mrpc", "finetuning", 2.4e-4, 0, 0.825, 90_000_000),
    ]
    section = "\n".join(report.accuracy_section("one seed", report.summarize(records)))
    assert "| 82.1 (lr 0.008) |" in section and "| -0.4 |" in section
    assert "± 0.0" not in section


def test_report_names_the_device_and_shows_gpu_memory_only_for_gpu_runs():
    report = load("report")
    cpu = [fake_record("sst2", "masking", 2e-3, 0, 0.8, 300_000)]
    section = "\n".join(report.accuracy_section("cpu", report.summarize(cpu)))
    assert "Device: unrecorded." in section and "GPU memory" not in section
    gpu = [dict(cpu[0], device="NVIDIA H100, 16 CPU cores", peak_gpu_mb=2048.0)]
    section = "\n".join(report.accuracy_section("gpu", report.summarize(gpu)))
    assert "Device: NVIDIA H100, 16 CPU cores." in section
    assert "peak GPU memory (MB) |" in section and "| 100 | 2048 | 0.002 |" in section


def test_peak_memory_wrapper_records_rss_and_no_gpu_for_a_cpu_run(tmp_path):
    script = tmp_path / "work.py"
    script.write_text("import sys\nimport torch\nx = torch.ones(4_000_000)\nprint(sys.argv[1:])\n")
    out = tmp_path / "peak.json"
    done = subprocess.run(
        [sys.executable, os.path.join(BENCH, "peak_rss.py"), str(out), str(script), "--flag", "1"],
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert "['--flag', '1']" in done.stdout
    peak = json.loads(out.read_text())
    assert peak["peak_rss_mb"] > 16 and peak["peak_gpu_mb"] is None and "no GPU" in peak["device"]


def test_random_batches_preset_drops_only_the_length_grouping():
    grouped = accuracy.speed_args("mrpc", accuracy.PRESETS["cpu"])
    random = accuracy.speed_args("mrpc", accuracy.PRESETS["cpu_mrpc_random_batches"])
    assert "group_by_length" in grouped and "group_by_length" not in random
    assert random == ["--pad_to_max_length", "false"]
    assert "group_by_length" not in accuracy.speed_args("swag", accuracy.PRESETS["cpu"])


def test_supplementary_preset_reruns_the_picked_rate_on_every_seed(tmp_path, monkeypatch):
    searched = [
        {"task": "mrpc", "method": "masking", "seed": 0, "learning_rate": lr, "value": value}
        for lr, value in ((4e-3, 0.81), (8e-3, 0.83), (1.6e-2, 0.82))
    ] + [{"task": "mrpc", "method": "masking", "seed": 1, "learning_rate": 4e-3, "value": 0.99}]
    accuracy.save_records(str(tmp_path / "cpu.json"), searched)
    monkeypatch.setattr(accuracy, "RESULTS", str(tmp_path))
    run, calls = peaked_at(1.0)
    accuracy.search("mrpc", "masking", accuracy.PRESETS["cpu_mrpc_3_epochs"], run)
    assert calls == [(8e-3, 0), (8e-3, 1)]
    with pytest.raises(SystemExit, match="finetuning"):
        accuracy.search("mrpc", "finetuning", accuracy.PRESETS["cpu_mrpc_3_epochs"], run)


def test_records_file_is_a_json_list_and_a_failed_save_keeps_the_old_one(tmp_path):
    path = str(tmp_path / "cpu.json")
    first = [{"task": "sst2", "method": "masking", "seed": 0, "learning_rate": 4e-3, "value": 0.8}]
    accuracy.save_records(path, first)
    assert accuracy.load_records(path) == first
    with pytest.raises(TypeError):
        accuracy.save_records(path, first + [{"task": "sst2", "value": object()}])
    assert accuracy.load_records(path) == first
    assert os.listdir(tmp_path) == ["cpu.json"]


def test_ablation_variants_are_separate_setups_and_get_a_row_each():
    preset = accuracy.PRESETS["cpu_sst2_masking_ablation"]
    setups = {
        name: accuracy.setup_of("sst2", "masking", dict(preset, variant=name, extra_args=extra))
        for name, extra in preset["variants"].items()
    }
    defaults = setups["paper defaults: blocks 2-5, 5% initial sparsity"]
    assert defaults == accuracy.setup_of("sst2", "masking", accuracy.PRESETS["cpu"])  # the cpu preset's own runs
    assert len({json.dumps(s, sort_keys=True) for s in setups.values()}) == len(setups)
    assert setups["initial sparsity 15%"]["args"][-2:] == ["--mask_initial_sparsity", "0.15"]

    report = load("report")
    records = [
        dict(fake_record("sst2", "masking", 8e-3, seed, value, nbytes), variant=variant)
        for variant, nbytes, values in (("defaults", 370_000, (0.80, 0.78)), ("top two", 160_000, (0.75, 0.77)))
        for seed, value in enumerate(values)
    ]
    section = "\n".join(report.ablation_section("ablation", records))
    assert "| defaults | 79.0 ± 1.4 | +0.0 | 10 | 370,000 |" in section
    assert "| top two | 76.0 ± 1.4 | -3.0 | 10 | 160,000 |" in section
    assert "learning rate 0.008" in section and "seeds [0, 1]" in section


def test_the_gpu_check_runs_on_cpu_in_its_small_form(tmp_path):
    """bench/gpu_check.py is known to work before any GPU is seen: the CI-sized run, on CPU."""
    out = tmp_path / "gpu_check.json"
    script = os.path.join(os.path.dirname(__file__), "..", "bench", "gpu_check.py")
    result = subprocess.run(
        [sys.executable, script, "--device", "cpu", "--small", "--out", str(out)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    report = json.loads(out.read_text())
    cases = ("bert-sequence-classification", "gpt2-causal-lm")
    assert set(report["correctness"]) == {f"{case}/{dtype}" for case in cases for dtype in ("float32", "bfloat16")}
    assert all(entry["ok"] for entry in report["correctness"].values())
    assert report["correctness"]["gpt2-causal-lm/float32"]["generate_equal"]
    assert report["training_bf16"]["ok"] and report["training_bf16"]["mask_changed"] > 0
    assert all(entry["ratio"] > 0 for entry in report["throughput"].values())
    assert set(report["kernels"]) == {"8 tokens", "128 tokens"}
