"""TrainConfig: named configs, YAML files, command-line overrides and --help listing every field."""
from __future__ import annotations

import json
import subprocess
import sys
from importlib import resources
from pathlib import Path

import pytest
import yaml

from mgid.checkpoint import read_meta
from mgid.cli import build_parser as cli_parser
from mgid.cli.train import build_parser
from mgid.cli.train import main as train_main
from mgid.config.fields import ConfigError, iter_fields, overrides_from_args
from mgid.config.literals import literal_values
from mgid.config.train_config import NAMED_CONFIGS, TrainConfig, diff, resolve_config, to_yaml
from mgid.data import EmbeddedDataConfig

REPO = Path(__file__).resolve().parents[2]


def _help(parser) -> str:
    return " ".join(parser.format_help().split())  # undo argparse's line wrapping


def _fmt(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value) if value else "(empty)"
    return str(value)


def test_help_lists_every_field_with_its_default():
    text = _help(build_parser())
    specs = iter_fields(TrainConfig, TrainConfig())
    assert len(specs) > 50  # model, loss, embedded (with rain), optim and the run's own fields
    for spec in specs:
        assert f"--{spec.path} " in text or f"--{spec.path}," in text, spec.path
        assert f"[default: {_fmt(spec.default)}]" in text, spec.path
    for alias in ("--config", "--data DIR", "--out DIR", "--max-steps", "--resume", "--device {auto,cpu,cuda}",
                  "--ops {auto,fused,reference}", "--model.memory_items", "--loss.bsw "):
        assert alias in text, alias


def test_cli_help_of_each_subcommand(capsys):
    parser = cli_parser()
    for argv in (["--help"], ["train", "--help"], ["data", "--help"], ["data", "synth", "--help"]):
        with pytest.raises(SystemExit) as info:
            parser.parse_args(argv)
        assert info.value.code == 0
    text = " ".join(capsys.readouterr().out.split())
    for spec in iter_fields(EmbeddedDataConfig, EmbeddedDataConfig()):
        assert f"--{spec.path}" in text, spec.path  # data synth exposes the embedded data settings
    assert "--max-steps" in text and "synth" in text


def test_train_py_script_help():
    proc = subprocess.run([sys.executable, str(REPO / "train.py"), "--help"], capture_output=True, text=True,
                          cwd=REPO, env={"PYTHONPATH": str(REPO), "PATH": "/usr/bin:/bin"}, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "--model.memory_items" in proc.stdout and "--config" in proc.stdout


def test_named_configs():
    paper = resolve_config("paper")
    assert (paper.batch_size, paper.crop_size, paper.epochs, paper.optim.lr, paper.model.memory_items) == (
        8, 256, 200, 2e-4, 20)
    assert paper.optim.schedule == "constant" and paper.max_steps is None
    # the paper's settings are the defaults, but where the public code is the reference (issue 25)
    assert diff(TrainConfig(), paper) == {"out": ("runs/mgid", "runs/paper"),
                                          **{k: (DEFAULTS_BEFORE_25[k], v) for k, v in PAPER_OFFICIAL.items()}}
    quick, cpu = resolve_config("quick"), resolve_config("cpu")
    assert quick.max_steps is not None and quick.crop_size <= 128 and quick.embedded.mode == "stream"
    for recipe in (quick, cpu):
        # the default network and objective: the paper's but for the public code's settings (`PAPER_OFFICIAL`)
        assert recipe.model == TrainConfig().model and recipe.loss == TrainConfig().loss
        assert recipe.optim.warmup_steps > 0 and recipe.optim.schedule == "cosine"
        assert recipe.bn_recalibration_batches > 0
    assert set(diff(quick, cpu)) <= {"out", "max_steps", "embedded.pairs_per_epoch", "optim.warmup_steps",
                                     "checkpoint_every", "image_every", "val_every", "val_count",
                                     "bn_recalibration_batches"}  # the demo trains the recipe that ships
    for name in NAMED_CONFIGS:
        assert isinstance(resolve_config(name), TrainConfig)
    with pytest.raises(ConfigError, match="unknown config"):
        resolve_config("no-such-config")


def test_yaml_then_command_line_precedence(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("batch_size: 3\nmodel:\n  memory_items: 7\nembedded:\n  rain:\n    density_range: [1, 2]\n")
    args = build_parser().parse_args(["--config", str(path), "--batch-size", "5", "--optim.lr", "1e-3",
                                      "--model.double_tanh", "false"])
    cfg = resolve_config(args.config, overrides_from_args(args))
    assert cfg.batch_size == 5  # command line beats the file
    assert cfg.model.memory_items == 7  # the file beats the defaults
    assert cfg.embedded.rain.density_range == (1.0, 2.0)
    assert cfg.optim.lr == 1e-3 and cfg.model.double_tanh is False
    assert cfg.crop_size == TrainConfig().crop_size  # untouched: the default
    # a named config, then the command line
    args = build_parser().parse_args(["--config", "quick", "--max-steps", "7"])
    cfg = resolve_config(args.config, overrides_from_args(args))
    assert cfg.max_steps == 7 and cfg.crop_size == resolve_config("quick").crop_size


def test_yaml_round_trip_and_print_config(tmp_path, capsys):
    cfg = resolve_config("quick", {"seed": 4, "data": "/x"})
    assert TrainConfig.from_dict(yaml.safe_load(to_yaml(cfg))) == cfg
    assert train_main(["--config", "quick", "--seed", "4", "--print-config"]) == 0
    printed = capsys.readouterr().out
    path = tmp_path / "dumped.yml"
    path.write_text(printed)
    assert resolve_config(str(path)) == resolve_config("quick", {"seed": 4})


def test_bad_settings_are_clear_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  memory_itemz: 3\n")
    with pytest.raises(ConfigError, match=r"model\.memory_itemz.*memory_items"):
        resolve_config(str(bad))
    bad.write_text("batch_size: eight\n")
    with pytest.raises(ConfigError, match="batch_size: expected int"):
        resolve_config(str(bad))
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        resolve_config(str(bad))
    with pytest.raises(ConfigError, match="memory_items must be >= 2"):
        resolve_config(None, {"model": {"memory_items": 1}})
    with pytest.raises(ConfigError, match="batch_size must be >= 1"):
        resolve_config(None, {"batch_size": 0})
    with pytest.raises(ConfigError, match="config file not found"):
        resolve_config(str(tmp_path / "missing.yaml"))
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--device", "tpu"])
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--model.double_tanh", "maybe"])


def test_nullable_and_bool_options():
    args = build_parser().parse_args(["--max-steps", "none", "--keep-step-checkpoints", "--data", "/d"])
    values = overrides_from_args(args)
    assert values == {"max_steps": None, "keep_step_checkpoints": True, "data": "/d"}


# --------------------------------------------------------------------------------------------------
# recipes as YAML files in the package, choices as Literal types, configs written before

RECIPES_V0 = Path(__file__).with_name("config_recipes_v0.json")  # the recipes as the in-code NAMED_CONFIGS built them


#: Fields whose recipe value changed on purpose since the recipes were in code: issue 17 made every recipe
#: leave the arithmetic to the machine (``auto``), where cpu and quick forced bf16 + channels_last.
CHANGED_SINCE_V0 = {"precision": "auto", "channels_last": "auto"}
#: Fields added since, as dotted paths: ``init_weights`` (issue 11) and the renderer's kinds of rain (issue 18).
ADDED_SINCE_V0 = {"init_weights", *(f"embedded.rain.{k}" for k in (
    "directions_range", "long_probability", "long_length_range", "long_density_range", "drizzle_probability",
    "drizzle_density_range", "drizzle_length_range", "drizzle_intensity_range", "near_probability",
    "near_density_range", "near_length_range", "near_width_range", "near_softness_range",
    "near_intensity_range")), *(f"embedded.{k}" for k in (  # issue 25: photo folders as backgrounds
    "photo_folders", "photo_folder_shares", "photo_heldout_per_folder", "photo_max_side", "photo_cache_mb")),
    "model.concat_order", "loss.ssim_border", "pair_preprocessing",  # issue 25: the public code's behaviour
    "embedded.rain.layer_probability", *(f"embedded.rain.layer.{k}" for k in (  # issue 25: the layer renderer
        "layers_range", "density_range", "angle_range", "angle_spread", "length_range", "softness_range",
        "saturated_share", "brightness_range", "streak_white_quantile", "veil_probability", "veil_range",
        "airlight_range"))}
#: The public code's behaviour that the paper recipe selects (issue 25; docs/ALGORITHM.md): its SSIM constants and
#: borders, its decoder's concatenation order and its loader's cut of side-by-side pairs. The defaults stay as before.
PAPER_OFFICIAL = {"model.concat_order": "skip_first", "loss.ssim_data_range": 1.0, "loss.ssim_border": "same",
                  "pair_preprocessing": "official"}
DEFAULTS_BEFORE_25 = {"model.concat_order": "upsampled_first", "loss.ssim_data_range": 2.0, "loss.ssim_border": "valid",
                      "pair_preprocessing": "crop"}


def flat(values: dict, prefix: str = "") -> dict:
    """A nested config dict as ``{"a.b.c": value}``."""
    out = {}
    for key, value in values.items():
        if isinstance(value, dict):
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def test_yaml_recipes_equal_the_in_code_recipes_field_by_field():
    """The recipes that were in code equal their YAML files field by field, but for the arithmetic (now auto
    everywhere); fields added since (`ADDED_SINCE_V0`) are at their defaults in them, and later recipes
    (``finetune``, ``long``) are extra."""
    before = json.loads(RECIPES_V0.read_text())
    old = {"paper", "cpu", "quick"}
    assert old <= set(NAMED_CONFIGS) and {"finetune", "long"} <= set(NAMED_CONFIGS)
    defaults = flat(TrainConfig().to_dict())
    for name in old:
        now = flat(resolve_config(name).to_dict())
        official = PAPER_OFFICIAL if name == "paper" else {}
        added = set(now) - set(flat(before[name]))
        assert added == ADDED_SINCE_V0, name
        assert {k: now.pop(k) for k in added} == {k: official.get(k, defaults[k]) for k in added}, name
        assert {k: now.pop(k) for k in CHANGED_SINCE_V0} == CHANGED_SINCE_V0, name
        assert {k: now.pop(k) for k in set(official) - added} == {k: official[k] for k in set(official) - added}, name
        assert now == {k: v for k, v in flat(before[name]).items()
                       if k not in CHANGED_SINCE_V0 and k not in official}, name
        changed = {*CHANGED_SINCE_V0, *official}
        assert set(diff(TrainConfig.from_dict(before[name]), resolve_config(name))) <= changed, name


def shipped_recipe_files() -> list[Path]:
    return sorted((REPO / "mgid" / "config" / "recipes").glob("*.yaml"))


@pytest.mark.parametrize("path", shipped_recipe_files(), ids=lambda p: f"{p.parent.name}/{p.name}")
def test_shipped_recipes_leave_the_arithmetic_to_the_machine(path):
    """Issue 17: recipes that forced bf16 + channels_last ran about 10x slower than fp32 on CPUs without
    native bf16. No shipped recipe may force a precision or a memory format; a flag still can."""
    raw = yaml.safe_load(path.read_text()) or {}
    for key in ("precision", "channels_last"):
        assert raw.get(key, "auto") == "auto", f"{path} forces {key}: {raw[key]!r}; write auto"
    cfg = resolve_config(str(path))
    assert (cfg.precision, cfg.channels_last) == ("auto", "auto"), path
    forced = resolve_config(str(path), {"precision": "fp32", "channels_last": "on"})
    assert (forced.precision, forced.channels_last) == ("fp32", "on")


def test_every_named_recipe_is_auto():
    for name in NAMED_CONFIGS:
        cfg = resolve_config(name)
        assert (cfg.precision, cfg.channels_last) == ("auto", "auto"), name


def test_old_checkpoint_memory_format_values_load():
    """Checkpoints written before ``channels_last`` took auto/on/off stored true / false / null."""
    for old, new in ((True, "on"), (False, "off"), (None, "auto")):
        assert TrainConfig.from_dict({"channels_last": old}).channels_last == new
    with pytest.raises(ConfigError, match="channels_last must be one of auto, on, off"):
        TrainConfig.from_dict({"channels_last": "maybe"})


def test_recipes_ship_with_the_package():
    folder = resources.files("mgid.config") / "recipes"
    for name in NAMED_CONFIGS:
        assert (folder / f"{name}.yaml").is_file(), name
    assert '"config/recipes/*.yaml"' in (REPO / "pyproject.toml").read_text()  # [tool.setuptools.package-data]
    assert yaml.safe_load((folder / "quick.yaml").read_text())["base"] == "cpu"  # quick = cpu + its overrides


def test_configs_written_before_still_load():
    """A checkpoint's config (OUT/checkpoints/last.json "config") in the format of earlier versions loads."""
    for name, values in json.loads(RECIPES_V0.read_text()).items():
        if not name.startswith("_"):
            # the fields added since (`ADDED_SINCE_V0`) take their defaults; the memory format's
            # true / false / null reads as on / off / auto (issue 17); the rest is as written
            memory_format = {True: "on", False: "off", None: "auto"}[values["channels_last"]]
            defaults = flat(TrainConfig().to_dict())
            expected = {**flat(values), **{k: defaults[k] for k in ADDED_SINCE_V0}, "channels_last": memory_format}
            assert flat(TrainConfig.from_dict(values).to_dict()) == expected, name
    meta = read_meta(REPO / "mgid" / "weights" / "mgid_embedded.json")
    shipped = meta["config"]  # the shipped weights' last stage: the photos recipe from the long recipe's weights
    assert set(diff(resolve_config("photos"), TrainConfig.from_dict(shipped))) <= {"out", "keep_step_checkpoints",
                                                                                 "init_weights"}
    # the config leaves the arithmetic to the machine; the record keeps what it was trained with
    assert (shipped["precision"], shipped["channels_last"]) == ("auto", "auto")
    assert (meta["arithmetic"]["precision"], meta["arithmetic"]["channels_last"]) == ("bf16", True)
    # the recipe exists once, in the package (issue 20): no written-out copy beside it
    assert not (REPO / "configs").exists()


def test_choices_come_from_literal_types(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  pad_mode: zeros\n")
    with pytest.raises(ConfigError, match=r"model\.pad_mode must be one of reflect, replicate, got 'zeros'"):
        resolve_config(str(bad))
    with pytest.raises(ConfigError, match=r"^device must be one of auto, cpu, cuda, got 'tpu'"):
        resolve_config(None, {"device": "tpu"})
    with pytest.raises(ConfigError, match=r"embedded\.mode must be one of stream, scenes"):
        resolve_config(None, {"embedded": {"mode": "video"}})
    with pytest.raises(ConfigError, match=r"optim\.schedule must be one of constant, cosine"):
        resolve_config(None, {"optim": {"schedule": 3}})
    with pytest.raises(ConfigError, match="precision must be one of"):
        TrainConfig(precision="fp8")  # built directly: the same check, from the same type
    capsys.readouterr()
    with pytest.raises(SystemExit):
        build_parser().parse_args(["--loss.compactness_mode", "first"])
    err = capsys.readouterr().err
    assert "--loss.compactness_mode" in err and "'mean', 'last'" in err
    text = _help(build_parser())
    specs = [s for s in iter_fields(TrainConfig, TrainConfig()) if literal_values(s.type)]
    assert {s.path for s in specs} >= {"device", "ops", "layout", "precision", "optim.schedule", "dist.backend",
                                       "model.pad_mode", "model.upsample", "loss.compactness_mode", "embedded.mode",
                                       "model.concat_order", "loss.ssim_border", "pair_preprocessing"}
    for spec in specs:
        assert f"--{spec.path} {{{','.join(literal_values(spec.type))}}}" in text, spec.path


def test_yaml_file_may_start_from_a_named_recipe(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("base: quick\nmax_steps: 12\nmodel:\n  memory_items: 9\n")
    cfg = resolve_config(str(path))
    assert diff(resolve_config("quick"), cfg) == {"max_steps": (800, 12), "model.memory_items": (20, 9)}
    path.write_text("base: nope\n")
    with pytest.raises(ConfigError, match="base: 'nope' is not a named config; available: paper, cpu, finetune, long, photos, quick"):
        resolve_config(str(path))


def test_readme_and_makefile_flags_parse():
    args = build_parser().parse_args(["--config", "quick", "--out", "/tmp/x", "--overwrite", "--embedded.mode", "scenes",
                                      "--model.grad_through_weights", "--model.double_tanh", "--batch_size", "32",
                                      "--dist.sync_bn", "true", "--precision", "bf16", "--compile",
                                      "--loss.compactness_mode", "last", "--optim.schedule", "cosine",
                                      "--model.update_max_over_assigned", "--embedded.rain.density_range", "5", "20"])
    cfg = resolve_config(args.config, overrides_from_args(args))
    assert args.overwrite and cfg.out == "/tmp/x" and cfg.embedded.mode == "scenes" and cfg.batch_size == 32
    assert cfg.model.grad_through_weights and cfg.model.double_tanh and cfg.model.update_max_over_assigned
    assert cfg.dist.sync_bn and cfg.precision == "bf16" and cfg.compile and cfg.loss.compactness_mode == "last"
    assert cfg.embedded.rain.density_range == (5.0, 20.0) and cfg.optim.schedule == "cosine"


def test_long_recipe_is_the_cpu_recipe_continued_on_the_widened_renderer():
    """Issue 18's second stage: from the cpu recipe's weights, with every new kind of rain, 128x128 crops."""
    changed = diff(resolve_config("cpu"), resolve_config("long"))
    assert set(changed) == {"out", "init_weights", "crop_size", "max_steps", "optim.warmup_steps",
                            "embedded.rain.directions_range", "embedded.rain.long_probability",
                            "embedded.rain.drizzle_probability", "embedded.rain.near_probability"}
    assert changed["init_weights"] == (None, "runs/cpu/checkpoints/last.safetensors")
    assert changed["crop_size"] == (64, 128)
