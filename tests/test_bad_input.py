"""Bad input through the real command line: each case is exit code 2, one `error:` line that
names the culprit (key, file, line), and no traceback. README's Reliability section counts
these cases."""

from __future__ import annotations

from pathlib import Path

import pytest
from cli_runs import ROMEBERT_RECIPE, assert_run_refuses, one_line_error

RECIPE_OVERRIDES = [
    (["colour=red"], "key 'colour': unknown key"),
    (["batch_size=many"], "key 'batch_size'"),
    (["gamma=1.5"], "key 'gamma': Input should be less than or equal to 1"),
    (["temperature=0"], "key 'temperature': Input should be greater than 0"),
    (["optimizer.lr=0"], "key 'optimizer.lr': Input should be greater than 0"),
    (["optimizer.lr=-3e-5"], "key 'optimizer.lr'"),
    (["lr=3e-5"], "key 'lr' moved: write optimizer: {lr: 3e-5} (--set optimizer.lr=3e-5)"),
    (["weight_decay=0.1"], "key 'weight_decay' moved: write optimizer: {weight_decay: 0.1}"),
    (["warmup_ratio=0.1"], "key 'warmup_ratio' moved: write scheduler: {warmup_ratio: 0.1}"),
    (["optimizer.name=adamx"], "key 'optimizer.name': unknown optimizer 'adamx'; allowed:"),
    (["optimizer.betaz=0.9"], "key 'optimizer' (optimizer 'adamw'): got an unexpected keyword "
     "argument 'betaz'; options are lr, betas"),
    (["optimizer.name=lbfgs"], "(optimizer 'lbfgs'): cannot take a training step"),
    (["optimizer.name=muon"], "(optimizer 'muon'): cannot take a training step on a weight "
     "matrix and a bias vector: ValueError: Muon only supports 2D parameters"),
    (["scheduler.name=cosin"], "key 'scheduler.name'"),
    (["scheduler={warmup_ratio: 0.1, warmup_steps: 5}"], "warmup_ratio or warmup_steps, not both"),
    (["loggers=[csv]"], "key 'loggers.0'"),
    (["loggers=[]"], "key 'loggers': an empty list logs nothing"),
    (["mode=fastbert"], "key 'mode'"),
    (["task=sst3"], "unknown GLUE task 'sst3'"),
    (["combiner=pcgard"], "unknown combiner 'pcgard'"),
    (["combiner={name: project, target: finl, reference: sd}"], "loss group 'finl'"),
    (["combiner={name: project, target: final}"], "combiner (combiner 'project')"),
    (["mode=deebert", "combiner=pcgrad"], "nothing to combine"),
    (["mode=pabee", "combiner=pcgrad"], "nothing to combine"),
    (["mode=deebert", "combiner=null", "loss_groups={exits: layer_weighted}"],
     "key 'loss_groups'"),
    (["loss_groups={final: final_taskk}"], "unknown loss term 'final_taskk'"),
    (["loss_groups={sd: {name: self_distillation, gamma: 2}}"], "loss_groups.sd"),
    (["mode=elbert", "loss_groups={exits: {name: learned_exit_weights, total: 0.5}}"],
     "total=0.5 is invalid"),
    (["loss_groups={a: final_task, b: layer_weighted}"], "loss group 'final' does not exist"),
    (["exit_policy=entropyy"], "unknown exit policy 'entropyy'"),
    (["exit_policy={name: patience, patience: 0}"], "key 'exit_policy'"),
    (["exit_policy={name: entropy, window: 2}"], "key 'exit_policy'"),
    (["model="], "key 'model'"),
    (["precision=fp8"], "key 'precision'"),
    (["max_nonfinite_steps=0"], "key 'max_nonfinite_steps'"),
    (["checkpoint_every=0"], "key 'checkpoint_every'"),
    (["keep_checkpoints=0"], "key 'keep_checkpoints'"),
    (["backbone_dropout=1"], "key 'backbone_dropout'"),
    (["program=nope"], "unknown program 'nope'"),
    (["batch_size"], "expected key=value"),
    (["optimizer.lr=[1,"], "value is not valid YAML"),
    (["optimizer.lr.sub=1"], "'lr' is not a mapping"),
]


@pytest.mark.parametrize(("overrides", "message"), RECIPE_OVERRIDES,
                         ids=[o[0].split("=")[0] + str(i) for i, (o, _) in
                              enumerate(RECIPE_OVERRIDES)])
def test_bad_recipe_values_are_refused_before_anything_runs(overrides, message, tmp_path):
    assert_run_refuses(overrides, message, tmp_path / "out")


def recipe_files(tmp_path: Path) -> list[tuple[list[str], str]]:
    bad_yaml = tmp_path / "bad_yaml.yaml"
    bad_yaml.write_text("program: multiexit_glue\nmode: romebert\nepochs: [1,\n")
    not_mapping = tmp_path / "list.yaml"
    not_mapping.write_text("- program\n- multiexit_glue\n")
    no_program = tmp_path / "no_program.yaml"
    no_program.write_text("mode: romebert\n")
    unsafe = tmp_path / "unsafe.yaml"
    unsafe.write_text("program: !!python/object/apply:os.system ['echo unsafe']\n")
    return [
        (["run", str(tmp_path / "missing.yaml")], "missing.yaml does not exist"),
        (["run", str(bad_yaml)], "bad_yaml.yaml:4: invalid YAML"),
        (["run", str(not_mapping)], "a recipe must be a mapping"),
        (["run", str(no_program)], "key 'program' is missing"),
        (["run", str(unsafe)], "unsafe.yaml:1: invalid YAML"),  # safe loader: no objects
        (["validate", str(tmp_path / "missing.yaml")], "does not exist"),
    ]


def test_bad_recipe_files(tmp_path):
    for args, message in recipe_files(tmp_path):
        one_line_error(args, message)


def test_problems_found_when_the_run_starts(tmp_path, shared_glue_dir):
    cases = [
        (["--set", "precision=fp16", "--set", "device=cpu"], "precision 'fp16' needs a CUDA"),
        (["--set", f"model={tmp_path / 'no-such-model'}"], "no-such-model"),
        (["--set", "device=cuda:7"], "device 'cuda:7'"),
        (["--set", f"data_dir={tmp_path / 'nodata'}", "--set", "model=minilm"], "nodata"),
        (["--resume"], "--resume needs --output"),
    ]
    for extra, message in cases:
        if extra == ["--set", "device=cuda:7"]:
            import torch

            if torch.cuda.is_available():
                continue  # only meaningful without CUDA
        output = [] if "--resume" in extra else ["--output", str(tmp_path / "out")]
        one_line_error(["run", ROMEBERT_RECIPE, *output, *extra], message)


def test_bad_model_folders_and_tasks_for_predict_and_eval(tmp_path, tiny_bert_dir):
    from gradsurg.multiexit.model import MultiExitModel

    model, tokenizer = MultiExitModel.from_backbone(str(tiny_bert_dir), num_labels=2)
    good = tmp_path / "good"
    model.save_pretrained(good, tokenizer=tokenizer)
    corrupt = tmp_path / "corrupt"
    model.save_pretrained(corrupt, tokenizer=tokenizer)
    (corrupt / "model.safetensors").write_bytes(b"\x00garbage")
    texts = tmp_path / "texts.txt"
    texts.write_text("a fine film\n")
    cases = [
        (["predict", str(tmp_path / "none"), "--input", str(texts)], "none"),
        (["predict", str(corrupt), "--input", str(texts)], "model.safetensors"),
        (["eval", str(good), "--task", "sst3"], "unknown GLUE task 'sst3'"),
        (["predict", str(good), "--input", str(tmp_path / "nofile.txt")], "nofile.txt"),
    ]
    for args, message in cases:
        one_line_error(args, message)
