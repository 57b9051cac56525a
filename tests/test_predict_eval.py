"""`gradsurg predict` and `gradsurg eval` on tiny saved models, and the text reader/writer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from gradsurg.cli import app
from gradsurg.data.collate import GlueCollator, tokenize_dataset
from gradsurg.data.glue import get_task, load_glue
from gradsurg.errors import ConfigError, DataError
from gradsurg.multiexit.evaluation.sweeps import policy_sweep
from gradsurg.multiexit.model import MultiExitModel
from gradsurg.multiexit.policies import EntropyPolicy, prediction_entropy
from gradsurg.multiexit.serving.textio import read_texts

cli = CliRunner()


def save_tiny(folder: Path, backbone: Path, task: str, labels: list[str] | None) -> Path:
    torch.manual_seed(0)
    model, tokenizer = MultiExitModel.from_backbone(
        str(backbone), num_labels=len(labels) if labels else 1, pooling="mean")
    with torch.no_grad():  # sharpen the random exits so some examples leave early
        for exit_head in model.exits:
            exit_head.classifier.weight.mul_(200.0)
    model.config.task = task
    model.config.labels = labels
    model.save_pretrained(folder, tokenizer=tokenizer)
    return folder


@pytest.fixture(scope="module")
def sst2_model(tiny_bert_dir, tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("sst2-model"), tiny_bert_dir, "sst2", ["0", "1"])


@pytest.fixture(scope="module")
def mrpc_model(tiny_bert_dir, tmp_path_factory) -> Path:
    return save_tiny(tmp_path_factory.mktemp("mrpc-model"), tiny_bert_dir, "mrpc", ["0", "1"])


def invoke(*args: str, stdin: str | None = None):
    return cli.invoke(app, [str(a) for a in args], input=stdin)


def test_predict_reads_plain_text_from_stdin_and_writes_jsonl(sst2_model) -> None:
    result = invoke("predict", sst2_model, "--policy", "fixed", "--layer", "3",
                    stdin="a gorgeous film\n\nthe plot is a mess\nfine\n")
    assert result.exit_code == 0, result.output
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["line"] for r in records] == [1, 3, 4]  # the blank line is skipped
    assert all(r["exit_layer"] == 3 and r["label"] in ("0", "1") for r in records)
    assert all(0.5 <= r["confidence"] <= 1.0 for r in records)
    # Same answers as the full-depth model's last exit.
    model = MultiExitModel.from_pretrained(sst2_model)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(sst2_model))
    enc = tok(["a gorgeous film", "the plot is a mess", "fine"], padding=True,
              return_tensors="pt")
    with torch.no_grad():
        last = model(enc["input_ids"], enc["attention_mask"], enc["token_type_ids"])[-1]
    assert [r["class"] for r in records] == last.argmax(-1).tolist()


def test_predict_batches_do_not_change_answers(sst2_model, tmp_path) -> None:
    texts = [f"sentence number {i} is {'good' if i % 2 else 'bad'} " * (1 + i % 5)
             for i in range(23)]
    source = tmp_path / "in.txt"
    source.write_text("\n".join(texts) + "\n")
    # A threshold in the middle of the first exit's entropies, so examples leave at
    # different layers whatever the random weights.
    model = MultiExitModel.from_pretrained(sst2_model)
    from transformers import AutoTokenizer
    enc = AutoTokenizer.from_pretrained(str(sst2_model))(texts, padding=True,
                                                          return_tensors="pt")
    with torch.no_grad():
        all_logits = torch.stack(model(enc["input_ids"], enc["attention_mask"],
                                       enc["token_type_ids"]))
    threshold = f"{float(prediction_entropy(all_logits[0]).median()):.6f}"
    outputs = []
    for batch in ("1", "7", "64"):
        target = tmp_path / f"out{batch}.jsonl"
        result = invoke("predict", sst2_model, "-i", source, "-o", target, "--threshold",
                        threshold, "--batch-size", batch)
        assert result.exit_code == 0, result.output
        outputs.append([json.loads(line) for line in target.read_text().splitlines()])
    first = [(r["class"], r["exit_layer"]) for r in outputs[0]]
    assert len(first) == 23
    for other in outputs[1:]:
        assert [(r["class"], r["exit_layer"]) for r in other] == first
    assert len({layer for _, layer in first}) >= 2  # early exit really happened for some


def test_predict_pairs_from_jsonl_and_tsv_output(mrpc_model, tmp_path) -> None:
    source = tmp_path / "pairs.jsonl"
    source.write_text("\n".join(json.dumps({"sentence1": f"he said {i}", "sentence2": f"{i}"})
                                for i in range(5)) + "\n")
    target = tmp_path / "out.tsv"
    result = invoke("predict", mrpc_model, "-i", source, "-o", target, "--policy", "patience",
                    "--patience", "1")
    assert result.exit_code == 0, result.output
    lines = target.read_text().splitlines()
    assert lines[0].split("\t") == ["line", "label", "class", "confidence", "exit_layer"]
    assert len(lines) == 6


@pytest.mark.parametrize(("args", "stdin", "message"), [
    (["--policy", "nope"], "x\n", "unknown exit policy 'nope'"),
    (["--patience", "2"], "x\n",
     "exit policy 'entropy'): got an unexpected keyword argument 'patience'; options are "
     "threshold"),
    (["--param", "threshold"], "x\n", "--param 'threshold': expected key=value"),
    (["--param", "name=fixed"], "x\n", "--param 'name=fixed': the policy is chosen with --policy"),
    (["--policy", "fixed", "--layer", "9"], "x\n", "layer=9 is out of range; allowed: 1..3"),
    (["--input-format", "jsonl"], '{"text": "ok"}\nnot json\n', "<stdin>:2: not valid JSON"),
    (["--input-format", "jsonl"], '{"txt": "ok"}\n', "<stdin>:1: no text field found"),
    (["--fields", "a,b"], "x\n", "--fields names 2 field(s) but the model takes 1"),
    ([], "one\ttwo\n", "<stdin>:1: expected 1 tab-separated text(s), got 2"),
])
def test_predict_bad_input_is_one_line_and_exit_2(sst2_model, args, stdin, message) -> None:
    result = invoke("predict", sst2_model, *args, stdin=stdin)
    assert result.exit_code == 2, result.output
    assert result.stdout == "" or "line" not in result.stdout.split("\n")[0]
    text = " ".join(result.output.split())
    assert "error:" in text and message in text, text
    assert "Traceback" not in result.output


def test_pair_model_refuses_single_texts(mrpc_model) -> None:
    result = invoke("predict", mrpc_model, stdin="only one sentence\n")
    assert result.exit_code == 2
    assert "<stdin>:1: expected 2 tab-separated text(s), got 1" in " ".join(result.output.split())


def test_predict_missing_model_folder(tmp_path) -> None:
    result = invoke("predict", tmp_path / "nowhere", stdin="x\n")
    assert result.exit_code == 2
    assert "does not exist" in result.output


def test_eval_matches_the_simulated_policy_on_real_dev_rows(sst2_model, shared_glue_dir,
                                                            tmp_path) -> None:
    report_path = tmp_path / "report.json"
    result = invoke("eval", sst2_model, "--data-dir", shared_glue_dir, "--max-rows", "48",
                    "--threshold", "0.3", "--batch-size", "16", "--full-depth",
                    "--json", report_path)
    assert result.exit_code == 0, result.output
    report = json.loads(report_path.read_text())
    assert report["task"] == "sst2" and report["examples"] == 48
    assert report["seconds"] > 0 and report["full_depth_seconds"] > 0
    assert "expected time %" in result.output and "speed-up" in result.output
    # Independent route: full-depth logits of every exit + the same policy, simulated.
    model = MultiExitModel.from_pretrained(sst2_model)
    from transformers import AutoTokenizer
    tok = AutoTokenizer.from_pretrained(str(sst2_model))
    data = tokenize_dataset(load_glue("sst2", "dev", data_dir=shared_glue_dir, max_rows=48), tok,
                            max_length=128)
    batch = GlueCollator(tok)([data[i] for i in range(48)])
    with torch.no_grad():
        all_logits = torch.stack(model(batch["input_ids"], batch["attention_mask"],
                                       batch["token_type_ids"]))
    point = policy_sweep(all_logits, batch["labels"], get_task("sst2"), EntropyPolicy(),
                         [0.3])[0]
    assert report["accuracy"] == pytest.approx(point.metric["accuracy"])
    assert report["time_percent"] == pytest.approx(point.time_percent)
    assert report["exit_counts"] == point.exit_counts


def test_eval_rejects_a_task_of_another_width(sst2_model, shared_glue_dir) -> None:
    result = invoke("eval", sst2_model, "--task", "mnli", "--data-dir", shared_glue_dir)
    assert result.exit_code == 2
    assert "task 'mnli' has 3 output(s) but the model has 2" in " ".join(result.output.split())


# -- the text reader on its own ------------------------------------------------------


def test_tsv_with_header_and_named_fields(tmp_path) -> None:
    path = tmp_path / "in.tsv"
    path.write_text("\ufeffid\tq\tp\n1\tfirst?\tfirst.\n2\tsecond?\tsecond.\n", encoding="utf-8")
    got = list(read_texts(path, arity=2, fields=["q", "p"], header=True))
    assert [(t.line, t.text_a, t.text_b) for t in got] == [(2, "first?", "first."),
                                                          (3, "second?", "second.")]
    with pytest.raises(DataError, match=r"in.tsv:1: header has no column 'x'"):
        list(read_texts(path, arity=2, fields=["q", "x"], header=True))
    with pytest.raises(ConfigError, match="needs --header"):
        list(read_texts(path, arity=2, fields=["q", "p"]))


def test_jsonl_auto_fields_and_errors(tmp_path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_text('{"question": "why?", "sentence": "because."}\n{"question": "how?"}\n')
    reader = read_texts(path, arity=2)
    assert next(reader).text_b == "because."
    with pytest.raises(DataError, match=r"in.jsonl:2: field 'sentence' is missing"):
        next(reader)
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"caf\xe9\n")
    with pytest.raises(DataError, match="not UTF-8"):
        list(read_texts(bad, arity=1))
    with pytest.raises(DataError, match="input file not found"):
        list(read_texts(tmp_path / "missing.tsv", arity=1))
