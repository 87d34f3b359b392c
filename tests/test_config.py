"""TrainConfig: named configs, YAML files, command-line overrides and --help listing every field."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mgid.cli import build_parser as cli_parser
from mgid.config import (
    NAMED_CONFIGS,
    ConfigError,
    TrainConfig,
    diff,
    iter_fields,
    named_config,
    overrides_from_args,
    resolve_config,
    to_yaml,
)
from mgid.data import EmbeddedDataConfig
from mgid.training import build_parser, main as train_main

REPO = Path(__file__).resolve().parents[1]


def _help(parser) -> str:
    return " ".join(parser.format_help().split())  # undo argparse's line wrapping


def _fmt(value) -> str:
    if value is None:
        return "unset"
    if isinstance(value, (list, tuple)):
        return " ".join(str(v) for v in value)
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
    paper = named_config("paper")
    assert (paper.batch_size, paper.crop_size, paper.epochs, paper.optim.lr, paper.model.memory_items) == (
        8, 256, 200, 2e-4, 20)
    assert paper.optim.schedule == "constant" and paper.max_steps is None
    assert set(diff(TrainConfig(), paper)) == {"out"}  # the paper's settings are the defaults
    quick, cpu = named_config("quick"), named_config("cpu")
    assert quick.max_steps is not None and quick.crop_size <= 128 and quick.embedded.mode == "stream"
    for recipe in (quick, cpu):
        assert recipe.model == paper.model and recipe.loss == paper.loss  # the paper's network and objective
        assert recipe.optim.warmup_steps > 0 and recipe.optim.schedule == "cosine"
        assert recipe.bn_recalibration_batches > 0
    assert set(diff(quick, cpu)) <= {"out", "max_steps", "embedded.pairs_per_epoch", "optim.warmup_steps",
                                     "checkpoint_every", "image_every", "val_every", "val_count",
                                     "bn_recalibration_batches"}  # the demo trains the recipe that ships
    for name in NAMED_CONFIGS:
        assert isinstance(named_config(name), TrainConfig)
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
    assert cfg.max_steps == 7 and cfg.crop_size == named_config("quick").crop_size


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
