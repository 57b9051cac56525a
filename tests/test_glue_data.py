"""GLUE readers against the real local TSVs, broken inputs, hub column mapping, collation."""

from __future__ import annotations

import copy
from pathlib import Path

import datasets
import pytest
import torch

from gradsurg.data import (
    GLUE_TASKS,
    GlueCollator,
    get_task,
    hub_to_glue_schema,
    load_glue,
    load_glue_sample,
    read_glue_tsv,
    tokenize_dataset,
)
from gradsurg.errors import ConfigError, DataError

# Row counts (without header) from shared/glue_data/README.md.
ROW_COUNTS = [
    ("SST-2", "train", 67_349), ("SST-2", "dev", 872),
    ("MRPC", "train", 3_668), ("MRPC", "dev", 408),
    ("RTE", "train", 2_490), ("RTE", "dev", 277),
    ("STS-B", "train", 5_749), ("STS-B", "dev", 1_500),
    ("QNLI", "dev", 5_463),
    ("WNLI", "train", 635), ("WNLI", "dev", 71),
]


@pytest.fixture(scope="module")
def glue_dir(shared_glue_dir: Path) -> Path:
    """The real GLUE folder, located once in conftest.py."""
    return shared_glue_dir


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from gradsurg.multiexit.backbones import resolve_backbone

    return AutoTokenizer.from_pretrained(resolve_backbone("minilm"))


# --- task specs -------------------------------------------------------------------------


@pytest.mark.parametrize(("spelling", "name"), [
    ("SST-2", "sst2"), ("sst2", "sst2"), ("sts-b", "stsb"), ("STS-B", "stsb"), ("MNLI", "mnli"),
    ("CoLA", "cola"), (" qqp ", "qqp"), ("Rte", "rte"),
])
def test_get_task_accepts_folder_spellings(spelling: str, name: str) -> None:
    assert get_task(spelling) is GLUE_TASKS[name]


def test_get_task_unknown_lists_allowed() -> None:
    with pytest.raises(ConfigError, match="allowed: sst2, cola, mrpc") as info:
        get_task("sst-5")
    assert "\n" not in str(info.value)


def test_spec_fields() -> None:
    assert set(GLUE_TASKS) == {"sst2", "mrpc", "rte", "cola", "stsb", "qnli", "qqp", "mnli", "wnli"}
    assert GLUE_TASKS["stsb"].num_labels == 1 and GLUE_TASKS["stsb"].labels is None
    assert GLUE_TASKS["mnli"].num_labels == 3
    assert GLUE_TASKS["mrpc"].text_columns == ("#1 String", "#2 String")
    assert GLUE_TASKS["mnli"].hub_text_columns == ("premise", "hypothesis")
    cola = GLUE_TASKS["cola"]
    assert (cola.has_header, cola.text_indices, cola.label_index) == (False, (3,), 1)


def test_split_aliases_and_hub_names() -> None:
    mnli = get_task("mnli")
    assert mnli.file_name("validation_matched") == "dev_matched.tsv"
    assert mnli.hub_split("dev_mismatched") == "validation_mismatched"
    assert get_task("rte").hub_split("dev") == "validation"
    with pytest.raises(ConfigError, match="allowed: train, dev_matched"):
        mnli.file_name("dev")
    with pytest.raises(ConfigError, match="allowed: train, dev"):
        get_task("sst2").file_name("test")


# --- real files -------------------------------------------------------------------------


@pytest.mark.parametrize(("folder", "split", "rows"), ROW_COUNTS)
def test_real_row_counts(glue_dir: Path, folder: str, split: str, rows: int) -> None:
    examples = read_glue_tsv(glue_dir / folder / f"{split}.tsv", folder)
    assert len(examples) == rows
    spec = get_task(folder)
    assert all((e.text_b is not None) == spec.is_pair for e in examples)
    if spec.is_regression:
        assert all(isinstance(e.label, float) and 0.0 <= e.label <= 5.0 for e in examples)
    else:
        assert {e.label for e in examples} == set(range(spec.num_labels))


def test_real_first_rows(glue_dir: Path) -> None:
    sst = read_glue_tsv(glue_dir / "SST-2" / "train.tsv", "sst2", max_rows=2)
    assert sst[0].text_a.strip() == "hide new secretions from the parental units"
    assert [e.label for e in sst] == [0, 0]
    # MRPC dev starts with a byte-order mark and has bare quotes inside fields.
    mrpc = read_glue_tsv(glue_dir / "MRPC" / "dev.tsv", "mrpc", max_rows=1)[0]
    assert mrpc.label == 1
    assert mrpc.text_b is not None and mrpc.text_b.startswith('" The foodservice pie')
    rte = read_glue_tsv(glue_dir / "RTE" / "dev.tsv", "rte", max_rows=1)[0]
    assert rte.text_b == "Christopher Reeve had an accident."
    assert rte.label == 1  # not_entailment
    stsb = read_glue_tsv(glue_dir / "STS-B" / "train.tsv", "stsb", max_rows=2)
    assert [e.label for e in stsb] == [5.0, 3.8]
    assert stsb[1].text_a == "A man is playing a large flute."


def test_max_rows_streams(glue_dir: Path) -> None:
    assert len(read_glue_tsv(glue_dir / "SST-2" / "train.tsv", "sst2", max_rows=100)) == 100
    assert read_glue_tsv(glue_dir / "SST-2" / "train.tsv", "sst2", max_rows=0) == []
    with pytest.raises(ConfigError, match="max_rows"):
        read_glue_tsv(glue_dir / "SST-2" / "dev.tsv", "sst2", max_rows=-1)


def test_load_glue_schema(glue_dir: Path) -> None:
    pair = load_glue("MRPC", "validation", data_dir=glue_dir)
    assert len(pair) == 408
    assert pair.column_names == ["text_a", "text_b", "label"]
    assert pair.features["label"].dtype == "int64"
    single = load_glue("sst2", "dev", data_dir=glue_dir, max_rows=10)
    assert single.column_names == ["text_a", "label"] and len(single) == 10
    reg = load_glue("stsb", "dev", data_dir=str(glue_dir), max_rows=3)
    assert reg.features["label"].dtype == "float32"
    assert reg[0]["label"] == pytest.approx(5.0)


@pytest.mark.parametrize(("task", "rows", "seed"), [("sst2", 8_000, 42), ("stsb", 500, 7)])
def test_a_seeded_sample_is_the_rows_datasets_shuffle_gives(glue_dir: Path, task: str,
                                                            rows: int, seed: int) -> None:
    """The study's seeded subsets (8,000 SST-2 sentences) were drawn with `Dataset.shuffle`:
    the sample drawn without building the whole split must be the same rows in the same order."""
    sample = load_glue_sample(task, "train", rows=rows, seed=seed, data_dir=glue_dir)
    whole = load_glue(task, "train", data_dir=glue_dir)
    assert sample.to_dict() == whole.shuffle(seed=seed).select(range(rows)).to_dict()
    assert sample.features == whole.features
    # a smaller sample at the same seed is its first rows (the 12-layer study's 3,000 of 8,000)
    assert load_glue_sample(task, "train", rows=rows // 2, seed=seed,
                            data_dir=glue_dir).to_dict() == sample[: rows // 2]
    rte = load_glue_sample("rte", "dev", rows=10_000, seed=seed, data_dir=glue_dir)
    assert rte.to_dict() == load_glue("rte", "dev", data_dir=glue_dir).to_dict()  # all, in order
    with pytest.raises(ConfigError, match=r"^rows must be None or a non-negative integer, got -1"):
        load_glue_sample(task, "train", rows=-1, seed=seed, data_dir=glue_dir)


def test_load_glue_uses_env(glue_dir: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GLUE_DIR", str(glue_dir))
    assert len(load_glue("wnli", "dev")) == 71


def test_load_glue_missing_folder_or_file(glue_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="QQP"):
        load_glue("qqp", "train", data_dir=glue_dir)
    (tmp_path / "QNLI").mkdir()
    with pytest.raises(DataError) as info:
        load_glue("qnli", "train", data_dir=tmp_path)
    assert str(tmp_path / "QNLI" / "train.tsv") in str(info.value)


# --- broken inputs ----------------------------------------------------------------------


def _write(tmp_path: Path, text: str, name: str = "broken.tsv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


PAIR_HEADER = "index\tsentence1\tsentence2\tlabel\n"


@pytest.mark.parametrize(("task", "text", "line", "needle"), [
    ("rte", "index\tsentence1\tlabel\n0\ta\tentailment\n", 1, "missing column 'sentence2'"),
    ("rte", PAIR_HEADER + "0\ta\tb\tentailment\n1\ta\tb\tmaybe\n", 3, "unknown label 'maybe'"),
    ("rte", PAIR_HEADER + "0\ta\tb\tentailment\n1\ta\tb\n", 3, "expected 4"),
    ("rte", PAIR_HEADER + '0\ta "quoted\tb\tc\tentailment\n', 2, "found 5"),
    ("rte", "", 1, "empty file"),
    ("rte", PAIR_HEADER, 2, "no data rows"),
    ("stsb", "sentence1\tsentence2\tscore\nx\ty\t4.5\nx\ty\tfive\n", 3, "non-numeric score"),
    ("stsb", "sentence1\tsentence2\tscore\nx\ty\tnan\n", 2, "non-numeric score"),
    ("cola", "src\t1\t\tok\nsrc\t1\tok\n", 2, "expected 4"),
    ("cola", "", 1, "no data rows"),
])
def test_broken_inputs_name_file_and_line(tmp_path: Path, task: str, text: str, line: int,
                                          needle: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(DataError) as info:
        read_glue_tsv(path, task)
    message = str(info.value)
    assert f"{path}:{line}:" in message
    assert needle in message
    assert "\n" not in message


def test_unknown_label_lists_allowed(tmp_path: Path) -> None:
    path = _write(tmp_path, PAIR_HEADER + "0\ta\tb\tneutral\n")
    with pytest.raises(DataError, match="allowed: 'entailment', 'not_entailment'"):
        read_glue_tsv(path, "rte")


def test_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope" / "dev.tsv"
    with pytest.raises(DataError, match="no such file") as info:
        read_glue_tsv(path, "sst2")
    assert str(path) in str(info.value)


def test_bad_utf8_reports_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.tsv"
    path.write_bytes(b"sentence\tlabel\nfine\t1\nbad \xff byte\t0\n")
    with pytest.raises(DataError, match=rf"{path.name}:3: not valid UTF-8"):
        read_glue_tsv(path, "sst2")


def test_bom_crlf_quotes_and_trailing_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "ok.tsv"
    path.write_bytes('\ufeffsentence\tlabel\r\nsays " hi\t1\r\n\r\n'.encode())
    assert [(e.text_a, e.label) for e in read_glue_tsv(path, "sst2")] == [('says " hi', 1)]


def test_headerless_cola(tmp_path: Path) -> None:
    path = _write(tmp_path, "gj04\t1\t\tThe sailors rode the breeze.\ngj04\t0\t*\tBill one.\n")
    examples = read_glue_tsv(path, "CoLA")
    assert [(e.text_a, e.text_b, e.label) for e in examples] == [
        ("The sailors rode the breeze.", None, 1), ("Bill one.", None, 0)]


# --- hub column mapping (hand-made dataset, no network) ---------------------------------


def test_hub_to_glue_schema_pairs() -> None:
    features = datasets.Features({
        "premise": datasets.Value("string"), "hypothesis": datasets.Value("string"),
        "label": datasets.ClassLabel(names=["entailment", "neutral", "contradiction"]),
        "idx": datasets.Value("int32")})
    hub = datasets.Dataset.from_dict(
        {"premise": ["p0", "p1"], "hypothesis": ["h0", "h1"], "label": [2, 0], "idx": [0, 1]},
        features=features)
    out = hub_to_glue_schema(hub, "mnli")
    assert out.column_names == ["text_a", "text_b", "label"]
    assert out.features["label"].dtype == "int64"
    assert out[0] == {"text_a": "p0", "text_b": "h0", "label": 2}


def test_hub_to_glue_schema_single_and_regression() -> None:
    sst = datasets.Dataset.from_dict({"sentence": ["a"], "label": [1], "idx": [0]})
    assert hub_to_glue_schema(sst, "sst2").column_names == ["text_a", "label"]
    sts = datasets.Dataset.from_dict(
        {"sentence1": ["a"], "sentence2": ["b"], "label": [3.5], "idx": [0]})
    out = hub_to_glue_schema(sts, "stsb")
    assert out.features["label"].dtype == "float32" and out[0]["text_b"] == "b"
    with pytest.raises(DataError, match="missing column 'question'"):
        hub_to_glue_schema(sts, "qnli")


# --- tokenization and collation ---------------------------------------------------------


def test_collate_pairs_pads_to_longest(glue_dir: Path, tokenizer) -> None:
    data = load_glue("rte", "dev", data_dir=glue_dir, max_rows=8)
    encoded = tokenize_dataset(data, tokenizer, max_length=64)
    assert "text_a" not in encoded.column_names and "label" in encoded.column_names
    lengths = [len(row["input_ids"]) for row in encoded]
    assert max(lengths) <= 64 and len(set(lengths)) > 1
    batch = GlueCollator(tokenizer)([encoded[i] for i in range(8)])
    assert batch["input_ids"].shape == (8, max(lengths))
    assert batch["labels"].dtype == torch.long
    assert batch["labels"].tolist() == data["label"]
    assert batch["attention_mask"].sum(dim=1).tolist() == lengths
    # Both segments present: type 0 then type 1 within the real (unpadded) tokens.
    types = batch["token_type_ids"]
    for row, length in enumerate(lengths):
        assert set(types[row, :length].tolist()) == {0, 1}
        assert types[row, length:].sum() == 0
        assert (batch["input_ids"][row, length:] == tokenizer.pad_token_id).all()


def test_collate_single_and_regression(glue_dir: Path, tokenizer) -> None:
    sst = tokenize_dataset(load_glue("sst2", "dev", data_dir=glue_dir, max_rows=8), tokenizer,
                           max_length=16)
    batch = GlueCollator(tokenizer)(list(sst))
    assert batch["input_ids"].shape[1] <= 16
    assert batch["token_type_ids"].max() == 0
    sts = tokenize_dataset(load_glue("stsb", "dev", data_dir=glue_dir, max_rows=8), tokenizer,
                           max_length=32)
    labels = GlueCollator(tokenizer)(list(sts))["labels"]
    assert labels.dtype == torch.float32 and labels[0].item() == pytest.approx(5.0)


def test_tokenize_rejects_bad_max_length(glue_dir: Path, tokenizer) -> None:
    data = load_glue("sst2", "dev", data_dir=glue_dir, max_rows=2)
    with pytest.raises(ConfigError, match="max_length"):
        tokenize_dataset(data, tokenizer, max_length=0)


def test_the_tokenized_cache_key_follows_everything_that_decides_the_output(
        glue_dir: Path, tokenizer) -> None:
    """The key is computed, not pickled: equal for equal inputs, different when the data,
    the truncation or the tokenizer's definition differ (a stale cache can never be reused)."""
    data = load_glue("sst2", "dev", data_dir=glue_dir, max_rows=8)
    key = tokenize_dataset(data, tokenizer, max_length=16)._fingerprint
    assert tokenize_dataset(data, tokenizer, max_length=16)._fingerprint == key
    assert tokenize_dataset(data, tokenizer, max_length=17)._fingerprint != key
    other_rows = load_glue("sst2", "dev", data_dir=glue_dir, max_rows=7)
    assert tokenize_dataset(other_rows, tokenizer, max_length=16)._fingerprint != key
    grown = copy.deepcopy(tokenizer)
    grown.add_tokens(["gradsurgtoken"])
    assert tokenize_dataset(data, grown, max_length=16)._fingerprint != key
    left = copy.deepcopy(tokenizer)
    left.truncation_side = "left"
    assert tokenize_dataset(data, left, max_length=16)._fingerprint != key
