"""Saved model folders (`predict`, `eval`) and backbone folders (`run`'s `model:`)
through the real CLI. A malformed or deeply nested JSON file, a tokenizer file transformers
cannot read, a config that describes no real model (or not the weights beside it), a
tokenizer that does not fit the model, pickled weights: each is one `error:` line naming the
file, exit 2, no traceback, nothing predicted or trained."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from cli_runs import one_line_error, tiny_recipe

DEEP = "[" * 3000 + "]" * 3000


def edit_json(name: str, change):
    def apply(folder: Path) -> None:
        data = json.loads((folder / name).read_text())
        change(data)
        (folder / name).write_text(json.dumps(data))
    return apply


def write(name: str, text: str):
    return lambda folder: (folder / name).write_text(text)


def swap_two_tokens(data: dict) -> None:
    vocab = data["model"]["vocab"]
    vocab["good"], vocab["bad"] = vocab["bad"], vocab["good"]


def more_tokens(data: dict) -> None:
    vocab = data["model"]["vocab"]
    for i in range(100):
        vocab[f"zzextra{i}"] = len(vocab)


def pad_with_one(data: dict) -> None:
    data["pad_token_id"] = 1


def set_key(key, value):
    return edit_json("config.json", lambda data: data.__setitem__(key, value))


# (case, damage, the message's file, its words); both kinds of folder unless marked
CASES = [
    ("tokenizer.json not JSON", write("tokenizer.json", "{not json"), "tokenizer.json",
     "not valid JSON"),
    ("tokenizer.json not a tokenizer", write("tokenizer.json", '{"a": 1}'), "",
     "no usable tokenizer"),
    ("config.json nested", write("config.json", DEEP), "config.json", "nested 3000 levels"),
    ("tokenizer_config.json nested", write("tokenizer_config.json", DEEP),
     "tokenizer_config.json", "nested 3000 levels"),
    ("tokenizer.json nested", write("tokenizer.json", DEEP), "tokenizer.json",
     "nested 3000 levels"),
    ("config.json NaN", write("config.json", '{"model_type": "bert", "x": NaN}'), "config.json",
     "holds NaN"),
    ("hidden_size 0", set_key("hidden_size", 0), "config.json", "hidden_size=0 describes no model"),
    ("layers -1", set_key("num_hidden_layers", -1), "config.json", "num_hidden_layers=-1"),
    ("heads 7", set_key("num_attention_heads", 7), "config.json", "not a multiple of"),
    ("hidden 32768", set_key("hidden_size", 1 << 15), "config.json", "more than this machine"),
    ("vocab a string", set_key("vocab_size", "many"), "config.json", "vocab_size"),
    ("bigger vocabulary", edit_json("tokenizer.json", more_tokens), "",
     "the tokenizer has 30622 tokens but the model embeds 30522"),
    ("another pad id", edit_json("config.json", pad_with_one), "",
     "the tokenizer pads with id 0 but the model with 1"),
]
SAVED_ONLY = [
    ("gradsurg_config.json nested", write("gradsurg_config.json", DEEP), "gradsurg_config.json",
     "nested 3000 levels"),
    ("hidden 1024: not the weights'", set_key("hidden_size", 1024), "config.json",
     "its weights file holds"),
    ("another vocabulary", edit_json("tokenizer.json", swap_two_tokens), "",
     "the tokenizer's vocabulary is not the one the model was saved with"),
    ("pickled weights", lambda folder: torch.save({"evil": print},
                                                  folder / "model.safetensors"),
     "model.safetensors", "unreadable safetensors file"),
]


def pickled_backbone(folder: Path) -> None:
    (folder / "model.safetensors").unlink()
    torch.save({"evil": print}, folder / "pytorch_model.bin")


BACKBONE_ONLY = [
    ("pickled weights", pickled_backbone, "pytorch_model.bin",
     "pickled weights that do not load without running their code"),
]


def damaged(source: Path, tmp_path: Path, damage) -> Path:
    folder = tmp_path / "folder"
    shutil.copytree(source, folder)
    damage(folder)
    return folder


@pytest.mark.parametrize("command", ["predict", "eval"])
@pytest.mark.parametrize("case, damage, name, words", CASES + SAVED_ONLY,
                         ids=[c[0] for c in CASES + SAVED_ONLY])
def test_a_bad_saved_model_folder_is_one_line_naming_the_file(
        command, case, damage, name, words, saved_model, tmp_path):
    folder = damaged(saved_model, tmp_path, damage)
    output = one_line_error([command, folder], words, stdin="a fine film\n")
    assert str(folder / name) in output, output
    assert "weights_only=False" not in output


@pytest.mark.parametrize("case, damage, name, words", CASES + BACKBONE_ONLY,
                         ids=[c[0] for c in CASES + BACKBONE_ONLY])
def test_a_bad_backbone_folder_is_one_line_naming_the_file(
        case, damage, name, words, tiny_bert_dir, shared_glue_dir, tmp_path):
    folder = damaged(tiny_bert_dir, tmp_path, damage)
    recipe = tiny_recipe(tmp_path, folder, shared_glue_dir, checkpoints=False)
    out = tmp_path / "out"
    output = one_line_error(["run", recipe, "--output", out], words)
    assert str(folder / name) in output and "weights_only=False" not in output, output
    assert not (out / "train_log.jsonl").exists() and not (out / "results.json").exists()


def test_a_saved_model_records_its_tokenizers_vocabulary(saved_model):
    recorded = json.loads((saved_model / "gradsurg_config.json").read_text())
    assert len(recorded["tokenizer_vocabulary"]) == 64  # SHA-256, checked on every load


@pytest.mark.parametrize("line, words", [
    ('{"text": ' + "[" * 3000 + "]" * 3000 + "}", "<stdin>:2: JSON nested 3001 levels deep"),
    ('{"text": NaN}', "<stdin>:2: holds NaN"),
])
def test_a_jsonl_input_line_is_read_by_the_same_bounded_reader(line, words,
                                                               saved_model):
    one_line_error(["predict", saved_model, "--input-format", "jsonl"], words,
                   stdin='{"text": "a fine film"}\n' + line + "\n")


@pytest.mark.parametrize("command", ["predict", "eval"])
def test_a_saved_model_with_non_finite_weights_is_refused(command, saved_model,
                                                          tmp_path):
    from safetensors.torch import load_file, save_file

    folder = damaged(saved_model, tmp_path, lambda folder: None)
    weights = load_file(folder / "model.safetensors")
    name = sorted(weights)[-1]
    weights[name].view(-1)[0] = float("nan")
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    one_line_error([command, folder], f"tensor {name!r} holds NaN/inf", stdin="a fine film\n")
