"""The `gradsurg` command line: run and validate recipes, list what is registered."""

from __future__ import annotations

import dataclasses
import datetime as dt
import functools
import inspect
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, get_type_hints

import typer
import yaml
from pydantic import BaseModel
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from gradsurg import strict_json, strict_yaml
from gradsurg.distributed import is_main_process
from gradsurg.errors import ConfigError, GradsurgError, bounded
from gradsurg.extras import import_optional
from gradsurg.multiexit.policies import POLICIES, ExitPolicy
from gradsurg.numbers import check_finite_numbers
from gradsurg.outputs import (
    OutputLock,
    atomic_write_text,
    check_output_file,
    check_output_path,
    new_run_folder,
    os_error_message,
)
from gradsurg.programs import PROGRAMS
from gradsurg.recipes import load_recipe
from gradsurg.run_folder import (
    CHECKPOINTS_DIR,
    EXIT_LOGITS_FILE,
    RECIPE_FILE,
    RESULTS_FILE,
    check_run_folder,
    plain_defaults,
    write_recipe,
    write_results,
)

app = typer.Typer(
    name="gradsurg",
    help="Gradient surgery for multi-loss training: run recipes, predict and evaluate with "
    "early exit, list what is registered (built in and from plugins).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
console = Console()
errors = Console(stderr=True)

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="Override a recipe key: --set key.sub=value (repeatable)."),
]


PolicyOption = Annotated[str, typer.Option(
    "--policy", "-p", help="Exit policy: entropy, normalized_entropy, max_prob, patience, "
    "confidence_window, fixed (or a plugin's).")]


def policy_from_options(name: str, **options: float | int | None) -> ExitPolicy:
    """The named policy with only the options the user gave (the rest keep defaults)."""
    spec: dict[str, object] = {k: v for k, v in options.items() if k != "param" and v is not None}
    for item in options.get("param") or []:  # type: ignore[union-attr]
        key, sep, raw = str(item).partition("=")
        if not sep or not key:
            raise ConfigError(f"--param {item!r}: expected key=value")
        if key == "name":
            raise ConfigError(f"--param {item!r}: the policy is chosen with --policy")
        try:
            spec[key] = strict_yaml.load(raw)
        except yaml.YAMLError:
            raise ConfigError(f"--param {item!r}: value is not valid YAML") from None
    check_finite_numbers(spec, source=f"--policy {name}", kind="option")
    built: ExitPolicy = POLICIES.build({"name": name, **spec}, where=f"--policy {name}")
    return built


@dataclass(frozen=True)
class ExitOptions:
    """What `predict` and `eval` both take: the exit policy and its parameters as given on
    the command line, and how the model runs. Declared once (`takes_exit_options`)."""

    policy: PolicyOption = "entropy"
    threshold: Annotated[float | None, typer.Option(
        help="entropy / normalized_entropy / confidence_window: exit below it; max_prob: "
        "above it.")] = None
    patience: Annotated[int | None, typer.Option(
        help="patience: consecutive agreeing exits needed.")] = None
    tolerance: Annotated[float | None, typer.Option(
        help="patience on regression: largest change that counts as agreeing.")] = None
    window: Annotated[int | None, typer.Option(
        help="confidence_window: exits that must agree.")] = None
    margin: Annotated[float | None, typer.Option(
        help="confidence_window: required margin (two classes: p > 0.5 + margin).")] = None
    layer: Annotated[int | None, typer.Option(
        help="fixed: leave after this many layers (1 = first exit).")] = None
    param: Annotated[list[str] | None, typer.Option(
        "--param", help="Any other policy parameter: --param key=value (repeatable).")] = None
    batch_size: Annotated[int, typer.Option(min=1, help="Examples per forward pass.")] = 32
    max_length: Annotated[int, typer.Option(
        min=2, help="Truncate inputs to this many tokens.")] = 128
    device: Annotated[str, typer.Option(help="auto, cpu, cuda, cuda:1, ...")] = "auto"
    preference: Annotated[str | None, typer.Option(
        help="Models trained with preference_conditioning (COSMOS): the trade-off to answer "
        "for, one number per loss group, comma-separated, scaled to sum 1 (e.g. 0.3,0.7); "
        "default the centre, 1/k each. Refused for other models.")] = None

    def rule(self) -> ExitPolicy:
        """The policy with only the parameters the user gave (the rest keep defaults);
        called inside the command, so its errors come in the command's own order."""
        return policy_from_options(
            self.policy, threshold=self.threshold, patience=self.patience,
            tolerance=self.tolerance, window=self.window, margin=self.margin, layer=self.layer,
            param=self.param)


def takes_exit_options(command: Callable[..., None]) -> Callable[..., None]:
    """Typer sees `ExitOptions`' fields as options where `command` has its `options`
    parameter; `command` receives them as one `ExitOptions`."""
    own = inspect.signature(command, eval_str=True)
    hints = get_type_hints(ExitOptions, include_extras=True)
    shared = [inspect.Parameter(field.name, inspect.Parameter.KEYWORD_ONLY,
                                default=field.default, annotation=hints[field.name])
              for field in dataclasses.fields(ExitOptions)]
    names = [field.name for field in dataclasses.fields(ExitOptions)]
    parameters: list[inspect.Parameter] = []
    for parameter in own.parameters.values():
        if parameter.name == "options":
            parameters.extend(shared)
        else:
            parameters.append(parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY))

    @functools.wraps(command)
    def with_options(**given: Any) -> None:
        options = ExitOptions(**{name: given.pop(name) for name in names})
        command(**given, options=options)

    with_options.__signature__ = own.replace(parameters=parameters)  # type: ignore[attr-defined]
    with_options.__annotations__ = {p.name: p.annotation for p in parameters}
    return with_options


def note_preference(loaded: Any) -> None:
    """Say which trade-off a preference-conditioned model answers for (stderr)."""
    groups = loaded.model.config.preference_groups
    if groups is not None:
        ray = ", ".join(f"{g} {v:.4g}" for g, v in zip(groups, loaded.model.preference.tolist()))
        errors.print(f"preference: {ray}", highlight=False)


def optional(module: str, *names: str) -> tuple[Any, ...]:
    """Names from a module that needs an extra; a missing extra is one `error:` line."""
    try:
        loaded = import_optional(module)
    except GradsurgError as error:
        raise fail(error) from None
    return tuple(getattr(loaded, name) for name in names)


#: What every command turns into one `error:` line and exit code 2 (through `fail`): the
#: user's input (GradsurgError) and every file-system failure (OSError: disk full, read-only
#: folder, a name too long, ...), named by its path. Each command catches exactly these.
USER_ERRORS = (GradsurgError, OSError)


def fail(error: Exception) -> typer.Exit:
    message = bounded(os_error_message(error) if isinstance(error, OSError) else str(error))
    message = " ".join(message.splitlines())  # one line, whatever the message held
    errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    return typer.Exit(code=2)


RUN_EPILOG = (
    f"The output folder receives {RECIPE_FILE} (the resolved recipe), {RESULTS_FILE}, "
    f"{EXIT_LOGITS_FILE} (multiexit_glue: every exit's dev outputs, for gradsurg compare), "
    "train_log.jsonl (one line per logging step; tensorboard/ too with loggers: [jsonl, "
    f"tensorboard]), {CHECKPOINTS_DIR}/ (for --resume), plots/*.png and "
    "model/ (reload with gradsurg predict / eval). `gradsurg keys PROGRAM` lists every recipe key."
)


@app.command(epilog=RUN_EPILOG)
def run(
    recipe: Annotated[Path, typer.Argument(
        help="Recipe YAML file (e.g. recipes/quickstart.yaml) or the name of a recipe an "
        "installed package registers (gradsurg plugins lists them); a file path wins.")],
    overrides: SetOption = None,
    output: Annotated[
        str | None,
        typer.Option("--output", "-o", help="Output folder (default: runs/<recipe>-<time>, "
                     "with -2, -3, ... added if that name is taken)."),
    ] = None,
    resume: Annotated[bool, typer.Option(
        "--resume", help="Continue the run in --output from its latest checkpoint (same recipe "
        "and overrides); starts at step 0 if it has none.")] = False,
) -> None:
    """Train and evaluate the program a recipe names; write results to the output folder."""
    lock: OutputLock | None = None
    try:
        program, config = load_recipe(recipe, overrides or [])
        resolved = config.model_dump(mode="json")
        if resume and output is None:
            raise ConfigError("--resume needs --output DIR: the folder of the run to continue")
        if resume and not program.resumable:
            raise ConfigError(f"program {program.name!r} cannot resume; run it without --resume")
        main = is_main_process()  # under torchrun only rank 0 writes files and prints
        if output is not None:
            folder = check_output_path(output)
        else:
            folder = Path("runs") / f"{recipe.stem}-{dt.datetime.now():%Y%m%d-%H%M%S}"
            if main:
                folder = new_run_folder(folder)
        if main:  # one run per folder: a second one stops here, before touching anything
            lock = OutputLock(folder).acquire()
        check_run_folder(folder, resolved, resume=resume,
                         evaluation_keys=program.evaluation_keys,
                         defaults=plain_defaults(program.config))
        folder.mkdir(parents=True, exist_ok=True)
        if main:
            write_recipe(folder, resolved)
            console.print(f"[bold]{program.name}[/]: {program.summary} -> {folder}")
        extra = {"resume": True} if resume else {}
        results = program.run(config, folder, **extra)
        if main:
            console.print(f"results: {write_results(folder, results)}")
    except USER_ERRORS as error:
        raise fail(error) from None
    finally:
        if lock is not None:
            lock.release()


@app.command()
def validate(
    recipes: Annotated[list[Path], typer.Argument(
        help="Recipe YAML files or registered recipe names to check; a file path wins.")],
    overrides: SetOption = None,
) -> None:
    """Check recipes against their program's schema without running anything."""
    failed = False
    for recipe in recipes:
        try:
            program, _ = load_recipe(recipe, overrides or [])
            console.print(f"[green]ok[/] {recipe} ({program.name})")
        except USER_ERRORS as error:
            fail(error)
            failed = True
    if failed:
        raise typer.Exit(code=2)


@app.command()
@takes_exit_options
def predict(
    model_dir: Annotated[Path, typer.Argument(help="Saved model folder (a run's model/).")],
    input_file: Annotated[str, typer.Option(
        "--input", "-i", help="TSV, JSONL or plain text file; - reads stdin.")] = "-",
    output_file: Annotated[str, typer.Option(
        "--output", "-o", help="Where predictions go; - is stdout.")] = "-",
    input_format: Annotated[str, typer.Option(
        help="auto (by extension, else by the first line), jsonl or tsv.")] = "auto",
    output_format: Annotated[str | None, typer.Option(
        help="jsonl or tsv (default: from the output's extension, else jsonl).")] = None,
    fields: Annotated[str | None, typer.Option(
        help="Input text field(s), comma-separated, e.g. sentence1,sentence2.")] = None,
    header: Annotated[bool, typer.Option(help="TSV input starts with a header line.")] = False,
    options: ExitOptions = ExitOptions(),
) -> None:
    """Predict with early exit: one line per input with the answer, confidence and exit layer."""
    check_max_length, load_for_inference, predict_texts = optional(
        "gradsurg.multiexit.serving", "check_max_length", "load_for_inference",
        "predict_texts")
    from gradsurg.multiexit.serving.textio import open_output, read_texts, write_prediction

    count = 0
    try:
        rule = options.rule()
        out_format = output_format or ("tsv" if output_file.endswith(".tsv") else "jsonl")
        if out_format not in ("jsonl", "tsv"):
            raise ConfigError(f"--output-format {out_format!r} is unknown; allowed: jsonl, tsv")
        if input_format not in ("auto", "jsonl", "tsv"):
            raise ConfigError(f"--input-format {input_format!r} is unknown; allowed: auto, "
                              "jsonl, tsv")
        if output_file != "-":
            check_output_file(Path(output_file), option="--output")
        loaded = load_for_inference(model_dir, device=options.device,
                                    preference=options.preference)
        note_preference(loaded)
        check_max_length(loaded, options.max_length)
        # The whole input is read and checked first: a bad line 20,001 is reported before
        # any prediction is written, not after 20,000 of them.
        texts = list(read_texts(input_file, arity=loaded.arity, fmt=input_format,  # type: ignore[arg-type]
                                fields=fields.split(",") if fields else None, header=header))
        with open_output(output_file) as handle:  # a file appears only when all went well
            for record in predict_texts(loaded, rule, texts, batch_size=options.batch_size,
                                        max_length=options.max_length):
                write_prediction(handle, strict_json.strict(record), out_format,  # type: ignore[arg-type]
                                 first=count == 0)
                count += 1
    except USER_ERRORS as error:
        raise fail(error) from None
    errors.print(f"{count} predictions ({rule.describe()})", highlight=False)


@app.command("eval")
@takes_exit_options
def evaluate(
    model_dir: Annotated[Path, typer.Argument(help="Saved model folder (a run's model/).")],
    task: Annotated[str | None, typer.Option(
        help="GLUE task (default: the one the model was trained on).")] = None,
    split: Annotated[str, typer.Option(help="dev, train, dev_matched, ...")] = "dev",
    data_dir: Annotated[str | None, typer.Option(
        help="GLUE folder (default: $GLUE_DIR, else the Hugging Face hub).")] = None,
    max_rows: Annotated[int | None, typer.Option(min=1, help="Score the first N rows.")] = None,
    options: ExitOptions = ExitOptions(),
    full_depth: Annotated[bool, typer.Option(
        help="Also time the full-depth model on the same batches (measured speed-up).")] = False,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the report as JSON here.")] = None,
) -> None:
    """Score a saved model on a GLUE split under an exit policy; print metric and times."""
    check_max_length, evaluate_split, load_for_inference = optional(
        "gradsurg.multiexit.serving", "check_max_length", "evaluate_split",
        "load_for_inference")

    try:
        rule = options.rule()
        if json_out is not None:  # checked before the evaluation, not after it
            check_output_file(json_out, option="--json")
        loaded = load_for_inference(model_dir, device=options.device,
                                    preference=options.preference)
        note_preference(loaded)
        check_max_length(loaded, options.max_length)
        from gradsurg.data.glue import get_task  # --task resolved once, here

        report = evaluate_split(loaded, rule, task=None if task is None else get_task(task),
                                split=split, data_dir=data_dir,
                                batch_size=options.batch_size, max_length=options.max_length,
                                max_rows=max_rows, full_depth=full_depth)
    except USER_ERRORS as error:
        raise fail(error) from None
    table = Table(title=f"{report.task} {report.split}: {report.policy}, "
                        f"batch {options.batch_size}")
    table.add_column("measure")
    table.add_column("value", justify="right")
    for key, value in report.metric.items():
        table.add_row(key, "undefined" if value is None else f"{value * 100:.2f}")
    table.add_row("examples", str(report.examples))
    table.add_row("expected time % (layers)", f"{report.time_percent:.2f}")
    table.add_row("exits (layer 1..L)", " ".join(map(str, report.exit_counts)))
    table.add_row("measured seconds", f"{report.seconds:.3f}")
    table.add_row("examples / second", f"{report.examples / report.seconds:.1f}")
    if report.full_depth_seconds is not None:
        table.add_row("full-depth seconds", f"{report.full_depth_seconds:.3f}")
        table.add_row("speed-up: measured / predicted",
                      f"{report.measured_speedup:.2f} / {report.predicted_speedup:.2f}")
    console.print(table)
    if json_out is not None:
        try:
            atomic_write_text(json_out, strict_json.dumps(report.to_dict(), indent=2) + "\n")
        except USER_ERRORS as error:
            raise fail(error) from None



@app.command()
def keys(
    program: Annotated[str, typer.Argument(help="Program name, e.g. multiexit_glue.")],
) -> None:
    """List a program's recipe keys with their types, defaults and meaning."""
    try:
        config_cls = PROGRAMS.get(program).config
    except USER_ERRORS as error:
        raise fail(error) from None
    table = Table(title=f"recipe keys of {program}")
    for column in ("key", "type", "default", "meaning"):
        table.add_column(column)
    for row in key_rows(config_cls):
        table.add_row(*row)
    console.print(table)


def key_rows(schema: type[BaseModel], prefix: str = "") -> list[tuple[str, str, str, str]]:
    """(key, type, default, meaning) of each recipe key; a key holding a mapping of its own
    (`optimizer`) is a row, then one row per sub-key (`optimizer.lr`)."""
    rows = []
    for name, info in schema.model_fields.items():
        nested = info.annotation if isinstance(info.annotation, type) and issubclass(
            info.annotation, BaseModel) else None
        if nested is not None:
            default = "" if info.is_required() else "(below)"
            rows.append((prefix + name, "mapping", default, info.description or ""))
            rows.extend(key_rows(nested, f"{prefix}{name}."))
            continue
        default = "(required)" if info.is_required() else repr(info.get_default(
            call_default_factory=True))
        kind = getattr(info.annotation, "__name__", None) or str(info.annotation)
        rows.append((prefix + name, kind.replace("typing.", ""), default, info.description or ""))
    return rows


COMPARE_EPILOG = (
    "Each RUN_DIR is a finished multiexit_glue run (results.json; exit_logits.safetensors for a "
    "dense curve, else results.json's fixed threshold list, noted). Runs of different tasks or "
    "evaluation sets are refused. Without --output the tables are only printed; with it, "
    "compare.md, compare.json, per_exit.png and metric_vs_time.png are written there. A run "
    "whose train_log.jsonl holds per-block cosines (trained with the combiner blockwise or the "
    "recipe key conflict_blocks) also gets its conflict map: printed per block, and with "
    "--output drawn as conflicts_<run>.png (layers x group pairs) and kept in compare.json's "
    "conflict_maps."
)


@app.command(epilog=COMPARE_EPILOG)
def compare(
    run_dirs: Annotated[list[Path], typer.Argument(help="Finished run folders to compare.")],
    output: Annotated[Path | None, typer.Option(
        "--output", "-o", help="Folder for compare.md, compare.json and the plots "
        "(default: print only).")] = None,
) -> None:
    """Put finished multi-exit runs side by side: per-exit metrics, best metric within time
    budgets, area under the metric-vs-time curve, overlay plots."""
    from gradsurg.multiexit.evaluation.comparison import compare_runs
    from gradsurg.report import conflicts as conflict_report
    from gradsurg.report.compare import (
        budget_table,
        conflict_maps,
        conflict_plot_names,
        held_out_table,
        per_exit_table,
        summary_table,
        write_comparison,
    )
    from gradsurg.run_folder import load_run

    try:
        if output is not None and output.exists() and not output.is_dir():
            raise ConfigError(f"--output {output}: exists and is not a folder")
        comparison = compare_runs([load_run(folder) for folder in run_dirs])
        for table in (per_exit_table(comparison), budget_table(comparison),
                      held_out_table(comparison), summary_table(comparison)):
            if table is not None:
                console.print(table)
        for note in comparison.notes:
            console.print(f"note: {note}", highlight=False)
        maps = conflict_maps(comparison)
        names = conflict_plot_names(list(maps))
        for label, result in maps.items():
            console.print(conflict_report.block_table(result))
            drawn = (f"heatmap: {output / names[label]}" if output is not None
                     else "--output DIR draws its heatmap")
            console.print(f"conflicts: {label}: its train_log.jsonl holds per-block cosines "
                          f"({conflict_report.steps_text(result)}); "
                          f"{conflict_report.verdict(result).text()}; {drawn}", highlight=False)
        if output is not None:
            written = write_comparison(comparison, output, maps)
            console.print("wrote " + ", ".join(str(path) for path in written), highlight=False)
    except USER_ERRORS as error:  # file-system errors too: one line naming the path
        raise fail(error) from None


CONFLICTS_EPILOG = (
    "Trains the recipe's first --steps optimizer steps on a fresh copy of its model, in "
    "memory: no run folder, no checkpoint, no log file (only --json / --plot, when given). "
    "The loss is split into groups (multiexit_glue: romebert and romebert_sd one group per "
    "exit, exit_groups: sd; a recipe's own exit_groups or two or more loss_groups as they "
    "are) and summed by the combiner blockwise(sum), which logs per layer the cosine of every "
    "pair of groups reaching it; the recipe's own combiner and weighting are not applied while "
    "measuring. Prints the map (mean cosine and share of steps in conflict per block and "
    "pair), the conflict rate per block, and whether surgery has something to act on."
)


@app.command(epilog=CONFLICTS_EPILOG)
def conflicts(
    recipe: Annotated[Path, typer.Argument(
        help="Recipe YAML file or registered recipe name.")],
    steps: Annotated[int, typer.Option(
        "--steps", help="Optimizer steps to train and measure (the recipe's first ones).")],
    overrides: SetOption = None,
    share: Annotated[float | None, typer.Option(
        help="A (block, pair) cell is in conflict from this share of steps with a negative "
        "cosine on (0 < share <= 1; default 0.1: a combiner acting on conflict would change "
        "at least one update in ten).")] = None,
    json_out: Annotated[Path | None, typer.Option(
        "--json", help="Also write the map, the verdict, the command and the commit here.")
    ] = None,
    plot: Annotated[Path | None, typer.Option(
        "--plot", help="Also draw the map here as a PNG heatmap (layers x group pairs).")
    ] = None,
) -> None:
    """Where the recipe's loss groups conflict, per layer and pair of groups, over its first
    training steps, in memory; and whether gradient surgery has anything to act on."""
    from gradsurg.report import conflicts as report
    from gradsurg.report.plots import plot_conflict_map

    if share is None:
        share = report.DEFAULT_SHARE
    try:
        if steps < 1:
            raise ConfigError(f"--steps {steps}: must be >= 1 (optimizer steps to measure)")
        if not 0 < share <= 1:
            raise ConfigError(f"--share {share:g}: must be in (0, 1], a share of the steps")
        for path, option in ((json_out, "--json"), (plot, "--plot")):
            if path is not None:
                check_output_file(path, option=option)
        if json_out is not None and plot is not None and json_out.resolve() == plot.resolve():
            raise ConfigError(f"--json and --plot both name {json_out}; give two files")
        program, config = load_recipe(recipe, overrides or [])
        if program.measure_conflicts is None:
            raise ConfigError(f"program {program.name!r} cannot measure conflicts (it declares "
                              "no measure_conflicts)")
        commit = source_commit()  # the code that measures, before it runs
        measured = program.measure_conflicts(config, steps)
        result = report.conflict_map(measured.records)
    except USER_ERRORS as error:
        raise fail(error) from None
    judged = report.verdict(result, share)
    console.print(f"measured: {measured.trained_as}", highlight=False)
    console.print(report.conflict_table(result, share, title=f"{recipe}: conflict map over "
                                        f"{result['steps']} steps"))
    console.print(report.block_table(result, share))
    console.print(judged.text(), highlight=False)
    written = []
    try:
        if plot is not None:
            written.append(plot_conflict_map(result, plot, title=f"{recipe}: where the loss "
                                             f"groups conflict ({result['steps']} steps)"))
        if json_out is not None:
            command = ["gradsurg", "conflicts", str(recipe), "--steps", str(steps)]
            for item in overrides or []:
                command += ["--set", item]
            if share != report.DEFAULT_SHARE:
                command += ["--share", repr(share)]
            command += ["--json", str(json_out), *(["--plot", str(plot)] if plot else [])]
            data = {"command": command, **commit, "recipe": str(recipe),
                    "program": program.name, "trained_as": measured.trained_as,
                    "groups": measured.groups, **result,
                    "per_block": report.block_rates(result, share),
                    "verdict": judged.to_json()}
            if plot is not None:
                data["plot"] = {"file": plot.name, "sha256": file_sha256(plot)}
            atomic_write_text(json_out, strict_json.dumps(data, indent=1) + "\n")
            written.append(json_out)
    except USER_ERRORS as error:
        raise fail(error) from None
    if written:
        console.print("wrote " + ", ".join(map(str, written)), highlight=False)


def source_commit() -> dict[str, Any]:
    """The git commit of the gradsurg source that runs (and whether its checkout has changes),
    for results files; `commit: None` outside a git checkout."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                              text=True, timeout=30)
        status = subprocess.run(["git", "-C", str(root), "status", "--porcelain"],
                                capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return {"commit": None}
    if head.returncode != 0:
        return {"commit": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def file_sha256(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


PLUGINS_EPILOG = (
    "Extensions register through Python entry points in the groups shown by each table "
    "(gradsurg.combiners, gradsurg.loss_terms, gradsurg.policies, gradsurg.adapters, "
    "gradsurg.programs, gradsurg.recipes); see docs/plugins.md. Exit code 2 when an entry "
    "fails to load."
)


@app.command(epilog=PLUGINS_EPILOG)
def plugins(
    json_output: Annotated[bool, typer.Option(
        "--json", help="Print the listing as JSON: {kind: {group, entries: [{name, source, "
        "error, tested_against}]}}.")] = False,
) -> None:
    """List combiners, loss terms, loss weightings, exit policies, backbone adapters,
    optimizers, programs and recipes, each with the package it comes from (gradsurg for
    built-ins); every entry is loaded."""
    from gradsurg.plugins import REGISTRIES, as_json, inventory

    try:
        listing = inventory()
    except USER_ERRORS as error:  # e.g. two packages registering one name, an unreadable file
        raise fail(error) from None
    if json_output:
        typer.echo(json.dumps(as_json(listing), indent=2))
    else:
        for kind, rows in listing.items():
            console.print(f"[bold]{kind.replace('_', ' ')}[/] (entry point group "
                          f"{REGISTRIES[kind].group})", highlight=False)
            if not rows:
                console.print("  (none installed)\n")
                continue
            table = Table()
            table.add_column("name")
            table.add_column("package")
            table.add_column("status")
            methods = any(row.tested_against for row in rows)
            if methods:
                table.add_column("tested against")
            for row in rows:
                cells = [row.name, row.source, "ok" if row.error is None else "failed"]
                table.add_row(*cells, *([escape(row.tested_against or "-")] if methods else []))
            console.print(table)
    failures = [row.error for rows in listing.values() for row in rows if row.error]
    for message in failures:
        errors.print(f"[bold red]error:[/] {escape(message)}", highlight=False, soft_wrap=True)
    if failures:
        raise typer.Exit(code=2)


@app.command("list")
def list_registered() -> None:
    """Same as `gradsurg plugins` (kept for scripts written before it)."""
    plugins(json_output=False)


if __name__ == "__main__":
    app()
