"""`hf-masking inspect` and `compare`: their numbers checked against direct computations on tiny masks."""

import json
import os
import subprocess
import sys

import pytest
import torch
from conftest import load_quietly, save_pretrained_base, train_a_little
from transformers import AutoModelForSequenceClassification

from hf_masking import MaskedModel, MaskingConfig, codec
from hf_masking.cli import main


def _train(base_dir, seed: int, out) -> tuple[MaskedModel, dict[str, torch.Tensor]]:
    torch.manual_seed(seed)
    model = MaskedModel(
        load_quietly(AutoModelForSequenceClassification, base_dir, num_labels=2),
        MaskingConfig(initial_sparsity=0.1, seed=seed),
    )
    initial = {name: mask.clone() for name, mask in model.masks().items()}
    train_a_little(model, steps=4, seed=seed, lr=0.1)
    model.save_pretrained(out)
    return model, initial


@pytest.fixture(scope="module")
def masks(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli")
    base_dir = save_pretrained_base(root / "base")
    a, a_init = _train(base_dir, 0, root / "a")
    b, b_init = _train(base_dir, 1, root / "b")
    other_base = save_pretrained_base(root / "other-base", seed=7)
    _train(other_base, 0, root / "other")
    return root, (a, a_init), (b, b_init)


def test_inspect_reports_what_the_model_itself_says(masks, tmp_path, capsys):
    root, (a, _), _ = masks
    main(["inspect", str(root / "a"), "--json", str(tmp_path / "a.json"), "--plot", str(tmp_path / "a.png")])
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "a.json").read_text())
    expected = a.sparsity()
    assert report["global_sparsity"] == pytest.approx(expected["global"])
    assert {int(k): v for k, v in report["blocks"].items()} == pytest.approx(expected["blocks"])
    assert report["modules"] == pytest.approx(expected["modules"])
    assert report["head_class"] == "BertForSequenceClassification"
    (root / "a" / "tokenizer.json").write_text("{}")  # a script's output folder holds more than the repo
    on_disk = sum(os.path.getsize(root / "a" / f) for f in ("masking_config.json", "mask.safetensors", "README.md"))
    full = sum(p.numel() * p.element_size() for n, p in a.get_base_model().named_parameters() if "mask_scores" not in n)
    full += sum(b.numel() * b.element_size() for b in a.get_base_model().buffers())
    assert report["bytes"]["repo_on_disk"] == on_disk
    assert report["bytes"]["full_model"] == pytest.approx(full, rel=0.01)  # non-persistent buffers aside
    assert f"global sparsity {expected['global']:.4f}" in out and "attention.self.query" in out
    assert (tmp_path / "a.png").stat().st_size > 10_000


def _direct_s(a, a_init, b, b_init) -> dict[str, float]:
    masks_a, masks_b = a.masks(), b.masks()
    return {
        name: float((masks_a[name] != masks_b[name]).sum())
        / float((masks_a[name] != a_init[name]).sum() + (masks_b[name] != b_init[name]).sum())
        for name in masks_a
    }


def test_compare_matches_the_paper_formula_and_a_mask_with_itself_is_zero(masks, tmp_path):
    root, (a, a_init), (b, b_init) = masks
    main(
        [
            "compare",
            str(root / "a"),
            str(root / "b"),
            "--json",
            str(tmp_path / "ab.json"),
            "--plot",
            str(tmp_path / "ab.png"),
        ]
    )
    result = json.loads((tmp_path / "ab.json").read_text())["dissimilarity"]
    assert result == pytest.approx(_direct_s(a, a_init, b, b_init))
    assert 0.2 < min(result.values())  # two seeds' masks differ
    assert (tmp_path / "ab.png").stat().st_size > 10_000
    main(["compare", str(root / "a"), str(root / "a"), "--json", str(tmp_path / "aa.json")])
    assert set(json.loads((tmp_path / "aa.json").read_text())["dissimilarity"].values()) == {0.0}


def test_compare_refuses_masks_of_different_bases(masks, capsys):
    root, _, _ = masks
    with pytest.raises(SystemExit) as exit_info:
        main(["compare", str(root / "a"), str(root / "other")])
    assert exit_info.value.code == 2
    assert "different bases" in capsys.readouterr().err


def test_compare_leaves_out_a_head_of_another_label_set(masks, tmp_path):
    root, (a, a_init), _ = masks
    torch.manual_seed(4)
    six = MaskedModel(
        load_quietly(AutoModelForSequenceClassification, root / "base", num_labels=6),
        MaskingConfig(initial_sparsity=0.1, seed=4),
    )
    six.save_pretrained(tmp_path / "six")
    main(["compare", str(root / "a"), str(tmp_path / "six"), "--json", str(tmp_path / "six.json")])
    result = json.loads((tmp_path / "six.json").read_text())
    assert result["left_out"] == ["classifier"]
    assert sorted(result["dissimilarity"]) == sorted(n for n in a.masks() if n != "classifier")
    untouched = six.masks()  # never trained: all of s comes from A's moves
    for name, value in result["dissimilarity"].items():
        moved = float((a.masks()[name] != a_init[name]).sum())
        assert value == pytest.approx(float((a.masks()[name] != untouched[name]).sum()) / moved)


def test_an_untouched_mask_has_no_defined_dissimilarity(masks, tmp_path):
    root, _, _ = masks
    fresh = MaskedModel(
        load_quietly(AutoModelForSequenceClassification, root / "base", num_labels=2),
        MaskingConfig(initial_sparsity=0.1, seed=3),
    )
    fresh.save_pretrained(tmp_path / "fresh")
    main(["compare", str(tmp_path / "fresh"), str(tmp_path / "fresh"), "--json", str(tmp_path / "ff.json")])
    assert set(json.loads((tmp_path / "ff.json").read_text())["dissimilarity"].values()) == {None}
    assert codec.CODEC_NAME  # the codec the report names


def test_the_command_line_runs_as_a_module_with_help_on_every_subcommand():
    for args in ([], ["inspect"], ["compare"], ["evaluate"], ["interpolate"], ["embed"]):
        done = subprocess.run(
            [sys.executable, "-m", "hf_masking", *args, "--help"], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0 and "usage: hf-masking" in done.stdout, done.stderr
    done = subprocess.run(
        [sys.executable, "-m", "hf_masking", "inspect", "/no/such/mask"], capture_output=True, text=True
    )
    assert done.returncode == 2 and "/no/such/mask" in done.stderr and "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def sentiment(tmp_path_factory):
    """Three masks of one base with named labels, a dev file, and the same rows with other label names."""
    from script_utils import save_tiny_model, sentiment_rows

    root = tmp_path_factory.mktemp("evaluate")
    base = save_tiny_model(root / "base")
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    for seed in range(3):
        torch.manual_seed(seed)
        head = load_quietly(AutoModelForSequenceClassification, base, num_labels=2, **labels)
        MaskedModel(head, MaskingConfig(initial_sparsity=0.3, seed=seed)).save_pretrained(root / f"m{seed}")
    rows = sentiment_rows(40, seed=3)
    names = ("negative", "positive")
    (root / "dev.tsv").write_text("sentence\tlabel\n" + "".join(f"{t}\t{names[y]}\n" for t, y in rows))
    (root / "other.csv").write_text("text,stars\n" + "".join(f"{t},{'good' if y else 'bad'}\n" for t, y in rows))
    return root, rows


def _direct_logits(root, rows) -> dict[str, torch.Tensor]:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    batch = tokenizer([t for t, _ in rows], padding=True, return_tensors="pt")
    with torch.no_grad():
        return {f"m{s}": MaskedModel.from_pretrained(root / f"m{s}")(**batch).logits for s in range(3)}


def test_evaluate_scores_masks_and_ensembles_as_computed_directly(sentiment, tmp_path):
    root, rows = sentiment
    repos = [str(root / f"m{s}") for s in range(3)]
    main(["evaluate", *repos, "--data", str(root / "dev.tsv"), "--ensemble", "all", "--json", str(tmp_path / "e.json")])
    result = json.loads((tmp_path / "e.json").read_text())
    gold = torch.tensor([y for _, y in rows])
    logits = _direct_logits(root, rows)
    for seed, repo in enumerate(repos):
        expected = float((logits[f"m{seed}"].argmax(-1) == gold).float().mean())
        assert result["masks"][repo]["accuracy"] == pytest.approx(expected)
    mean = torch.stack(list(logits.values())).mean(0)
    assert result["ensembles"]["logits"]["accuracy"] == pytest.approx(float((mean.argmax(-1) == gold).float().mean()))
    majority = max(gold.float().mean().item(), 1 - gold.float().mean().item())
    assert result["majority_baseline"]["accuracy"] == pytest.approx(majority)
    accuracy = result["masks"][repos[0]]["accuracy"]
    assert result["masks"][repos[0]]["over_majority"] == pytest.approx(accuracy - majority)

    main(
        [
            "evaluate",
            repos[0],
            "--data",
            str(root / "dev.tsv"),
            "--ensemble",
            "all",
            "--json",
            str(tmp_path / "one.json"),
        ]
    )
    one = json.loads((tmp_path / "one.json").read_text())
    for how in ("labels", "logits", "probs"):  # an ensemble of one mask is that mask
        assert one["ensembles"][how]["accuracy"] == pytest.approx(one["masks"][repos[0]]["accuracy"])


def test_evaluate_transfers_a_mask_to_another_dataset_through_a_label_map(sentiment, tmp_path, capsys):
    root, _ = sentiment
    out = str(tmp_path / "t.json")
    main(["evaluate", str(root / "m0"), "--data", str(root / "dev.tsv"), "--json", str(tmp_path / "d.json")])
    main(
        [
            "evaluate",
            str(root / "m0"),
            "--data",
            str(root / "other.csv"),
            "--label_column",
            "stars",
            "--label-map",
            "bad=negative,good=positive",
            "--json",
            out,
        ]
    )
    same_rows = json.loads((tmp_path / "d.json").read_text())["masks"]
    assert json.loads(open(out).read())["masks"] == same_rows  # same texts, labels renamed: same scores
    with pytest.raises(SystemExit) as exit_info:
        main(["evaluate", str(root / "m0"), "--data", str(root / "other.csv"), "--label_column", "stars"])
    assert exit_info.value.code == 2 and "'bad'" in capsys.readouterr().err


@pytest.fixture(scope="module")
def finetuned(sentiment):
    """A stand-in for a finetuned model of the sentiment base: every weight moved a little."""
    root, _ = sentiment
    labels = {"id2label": {0: "negative", 1: "positive"}, "label2id": {"negative": 0, "positive": 1}}
    torch.manual_seed(11)
    model = load_quietly(AutoModelForSequenceClassification, root / "base", num_labels=2, **labels)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(0.05 * torch.randn_like(parameter))
    model.save_pretrained(root / "finetuned")
    return model.eval(), str(root / "finetuned")


def _sentiment_batch(root, rows):
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(root / "base")
    return tokenizer([t for t, _ in rows], padding=True, return_tensors="pt"), torch.tensor([y for _, y in rows])


def test_interpolate_ends_at_the_two_models_own_scores(sentiment, finetuned, tmp_path):
    root, rows = sentiment
    finetuned, finetuned_dir = finetuned
    out = tmp_path / "i.json"
    main(
        [
            "interpolate",
            "--finetuned",
            finetuned_dir,
            "--mask",
            str(root / "m1"),
            "--data",
            str(root / "dev.tsv"),
            "--points",
            "5",
            "--from-pretrained",
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "i.png"),
        ]
    )
    results = json.loads(out.read_text())
    assert [r["gamma"] for r in results] == [0, 0.25, 0.5, 0.75, 1.0] * 3
    assert [r["path"] for r in results[::5]] == [
        "finetuned -> masked",
        "pretrained -> finetuned",
        "pretrained -> masked",
    ]

    batch, gold = _sentiment_batch(root, rows)
    with torch.no_grad():
        own = {
            "finetuned": float((finetuned.eval()(**batch).logits.argmax(-1) == gold).float().mean()),
            "masked": float(
                (MaskedModel.from_pretrained(root / "m1")(**batch).logits.argmax(-1) == gold).float().mean()
            ),
        }
    line = {(r["path"], r["gamma"]): r["metric"] for r in results}
    assert line[("finetuned -> masked", 0)] == pytest.approx(own["finetuned"])
    assert line[("finetuned -> masked", 1.0)] == pytest.approx(own["masked"])
    assert line[("pretrained -> finetuned", 1.0)] == pytest.approx(own["finetuned"])
    assert line[("pretrained -> masked", 1.0)] == pytest.approx(own["masked"])
    assert (tmp_path / "i.png").stat().st_size > 10_000


def test_embed_probes_the_representations_each_model_gives(sentiment, finetuned, tmp_path):
    from transformers import AutoModel

    from hf_masking.evaluation import probe_accuracy

    root, rows = sentiment
    out = tmp_path / "e.json"
    main(
        [
            "embed",
            "--mask",
            str(root / "m2"),
            "--finetuned",
            finetuned[1],
            "--data",
            str(root / "dev.tsv"),
            "--json",
            str(out),
            "--plot",
            str(tmp_path / "e.png"),
        ]
    )
    results = json.loads(out.read_text())
    assert list(results["models"]) == ["pretrained", "finetuned", "masked"]
    assert results["labels"] == [("negative", "positive")[y] for _, y in rows]
    batch, gold = _sentiment_batch(root, rows)
    with torch.no_grad():
        direct = {
            "pretrained": AutoModel.from_pretrained(root / "base")(**batch).last_hidden_state[:, 0],
            "finetuned": finetuned[0](**batch, output_hidden_states=True).hidden_states[-1][:, 0],
            "masked": MaskedModel.from_pretrained(root / "m2")(**batch, output_hidden_states=True).hidden_states[-1][
                :, 0
            ],
        }
    for name, features in direct.items():
        assert results["models"][name]["probe_accuracy"] == pytest.approx(
            probe_accuracy(features.numpy(), gold.numpy())
        )
        assert torch.tensor(results["models"][name]["tsne"]).shape == (len(rows), 2)
    assert (tmp_path / "e.png").stat().st_size > 10_000


@pytest.mark.parametrize(
    "command, message",
    [
        (["interpolate", "--finetuned", "F", "--mask", "M", "--data", "D", "--points", "0"], "must be at least 2"),
        (["interpolate", "--finetuned", "F", "--mask", "M", "--data", "D", "--points", "-3"], "must be at least 2"),
        (["interpolate", "--finetuned", "F", "--mask", "M", "--data", "D", "--points", "1"], "must be at least 2"),
        (["embed", "--mask", "M", "--data", "D", "--max_rows", "0"], "must be at least 2"),
        (["embed", "--mask", "M", "--data", "D", "--max_rows", "-5"], "must be at least 2"),
        (["evaluate", "M", "--data", "D", "--batch_size", "0"], "must be at least 1"),
        (["evaluate", "M", "--data", "D", "--batch_size", "-1"], "must be at least 1"),
        (["evaluate", "M", "--data", "D", "--batch_size", "two"], "expected a whole number"),
        (["inspect", "M", "--plot", "{tmp}"], "is a folder; give a file name"),
        (["inspect", "M", "--plot", "{tmp}/figure"], "name the file with its format"),
        (["inspect", "M", "--plot", "{tmp}/no/such/dir/f.png"], "does not exist"),
        (["inspect", "M", "--json", "{tmp}"], "is a folder"),
    ],
)
def test_bad_numbers_and_paths_are_refused_at_parse_time(tmp_path, capsys, command, message):
    with pytest.raises(SystemExit) as stop:
        main([part.replace("{tmp}", str(tmp_path)) for part in command])
    assert stop.value.code == 2 and message in capsys.readouterr().err


def test_evaluate_says_which_flag_is_wrong_and_exits_2(sentiment, tmp_path, capsys):
    root, _ = sentiment
    mask, data = str(root / "m0"), str(root / "dev.tsv")
    for command, message in [
        (["evaluate", mask, "--data", str(tmp_path / "missing.tsv")], "--data '"),
        (["evaluate", mask, "--data", str(tmp_path)], "is a folder"),
        (["evaluate", mask, "--data", data, "--tokenizer", "/no/such/tokenizer"], "--tokenizer /no/such/tokenizer: no"),
        (["evaluate", mask, "--data", data, "--base_model", "/no/such/base"], "--base_model /no/such/base: no such"),
        (["interpolate", "--finetuned", "/no/such/model", "--mask", mask, "--data", data], "--finetuned /no/such"),
    ]:
        with pytest.raises(SystemExit) as stop:
            main(command)
        err = capsys.readouterr().err
        assert stop.value.code == 2 and message in err and "--validation_file" not in err, (command, err)


def test_evaluate_refuses_a_tokenizer_that_cannot_encode_the_data(sentiment, tmp_path, capsys):
    """A base folder whose tokenizer is not the model's (here: a vocabulary of a handful of tokens)."""
    from transformers import BertTokenizerFast

    root, _ = sentiment
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\n")
    BertTokenizerFast(vocab=str(tmp_path / "tok" / "vocab.txt")).save_pretrained(tmp_path / "tok")
    with pytest.raises(SystemExit) as stop:
        main(["evaluate", str(root / "m0"), "--data", str(root / "dev.tsv"), "--tokenizer", str(tmp_path / "tok")])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "into its unknown token '[UNK]'" in err and "Pass --tokenizer" in err
