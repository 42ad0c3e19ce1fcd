"""The command line as a user meets it: one clear line and a non-zero exit for bad input."""

import json
import sys

import pytest

from .conftest import run_cli


def _one_line_error(result, *fragments):
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr
    assert lines and lines[-1].startswith("bigmodel ") and "error:" in lines[-1], result.stderr
    for fragment in fragments:
        assert fragment in lines[-1]


def test_missing_input_file(tmp_path):
    _one_line_error(run_cli("prepare", "--input", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "o")),
                    "nope.txt", "no such file")


def test_non_utf8_input(tmp_path):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(b"ok\n\xff\xfe broken\n")
    _one_line_error(run_cli("prepare", "--input", str(bad), "--out", str(tmp_path / "o")), "bad.txt", "UTF-8")


def test_empty_corpus(tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text('{"text": "  "}\n', encoding="utf-8")
    _one_line_error(run_cli("prepare", "--input", str(empty), "--out", str(tmp_path / "o")), "empty after cleaning")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "junk").mkdir()
    _one_line_error(run_cli("generate", "--ckpt", str(tmp_path / "junk"), "--prompt", "hi"), "not a checkpoint")
    _one_line_error(run_cli("evaluate", "--ckpt", str(tmp_path / "gone"), "--data", str(tmp_path)), "no such")


def test_prompt_longer_than_context(trained_run):
    _one_line_error(run_cli("generate", "--ckpt", str(trained_run), "--prompt", "x" * 500), "context holds 32")


def test_pretrain_without_prepared_data(tmp_path):
    _one_line_error(run_cli("pretrain", "--data", str(tmp_path), "--out", str(tmp_path / "r")), "meta.json")


def test_generate_and_evaluate_from_the_command_line(trained_run, shakespeare_char, tmp_path):
    gen = run_cli("generate", "--ckpt", str(trained_run), "--prompt", "KING:", "--max-new-tokens", "20", "--seed", "1")
    assert gen.returncode == 0 and gen.stdout.startswith("KING:") and len(gen.stdout.strip()) >= 20
    report = tmp_path / "eval.json"
    ev = run_cli("evaluate", "--ckpt", str(trained_run), "--data", str(shakespeare_char), "--json", str(report),
                 "--out", str(tmp_path / "out"))
    assert ev.returncode == 0, ev.stderr
    figures = json.loads(report.read_text())
    assert json.loads((tmp_path / "out" / "metrics.json").read_text()) == figures  # --out is honoured too
    assert figures["tokens"] > 100_000 and 1.0 < figures["loss"] < 3.5
    assert figures["perplexity"] == pytest.approx(2.718281828 ** figures["loss"], rel=1e-6)


def test_evaluate_reports_characters_the_tokenizer_lacks(trained_run, tmp_path):
    text = tmp_path / "accents.txt"
    text.write_text("To be, or not to be: café, naïve, 東京.\n", encoding="utf-8")
    ev = run_cli("evaluate", "--ckpt", str(trained_run), "--data", str(text))
    assert ev.returncode == 0, ev.stderr
    assert "not in the tokenizer's vocabulary" in ev.stdout and "'é'" in ev.stdout


def test_prompts_from_a_file_each_get_a_completion(trained_run, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("KING:\nQUEEN:\\nMy lord\n", encoding="utf-8")
    result = run_cli("generate", "--ckpt", str(trained_run), "--prompt-file", str(prompts), "--max-new-tokens", "10",
                     "--greedy")
    assert result.returncode == 0, result.stderr
    assert "=== prompt 1 ===\nKING:" in result.stdout and "=== prompt 2 ===\nQUEEN:\nMy lord" in result.stdout


def test_device_flags_are_checked_and_cpu_runs(trained_run, tmp_path):
    import torch

    _one_line_error(run_cli("generate", "--ckpt", str(trained_run), "--prompt", "hi", "--device", "tpu"),
                    "--device 'tpu'")
    if not torch.cuda.is_available():
        _one_line_error(run_cli("embed", "--ckpt", str(trained_run), "--input", __file__, "--out",
                                str(tmp_path / "v.npy"), "--device", "cuda"), "no CUDA GPU")
    done = run_cli("generate", "--ckpt", str(trained_run), "--prompt", "KING:", "--max-new-tokens", "5", "--device",
                   "cpu")
    assert done.returncode == 0 and done.stdout.startswith("KING:"), done.stderr


def test_serve_settings_come_from_yaml_and_flags_win(tmp_path):
    import argparse

    from bigmodel.config import ServeConfig, load_yaml, resolve
    from bigmodel.errors import BigModelError

    recipe = tmp_path / "serve.yaml"
    recipe.write_text("serve:\n  ckpt: runs/x\n  max_batch: 2\n  port: 1234\n", encoding="utf-8")
    cfg = resolve(ServeConfig, load_yaml(str(recipe))["serve"], argparse.Namespace(port=999, max_batch=None))
    assert (cfg.ckpt, cfg.max_batch, cfg.port, cfg.host) == ("runs/x", 2, 999, "127.0.0.1")
    recipe.write_text("serve:\n  max_batches: 2\n", encoding="utf-8")
    with pytest.raises(BigModelError, match="unknown field.*max_batches"):
        resolve(ServeConfig, load_yaml(str(recipe))["serve"])


def test_yaml_values_are_checked_against_each_fields_type_naming_file_key_value_and_type(tmp_path):
    """PyYAML reads `5e-5` as a string: a float field takes it as the number it means; a value of the
    wrong type is one line naming the file, key, value and type, not an error deep inside AdamW."""
    from bigmodel.config import FinetuneConfig, load_yaml, resolve, yaml_text
    from bigmodel.errors import BigModelError

    recipe = tmp_path / "ft.yaml"
    recipe.write_text("finetune:\n  lr: 5e-5\n  epochs: 3.0\n  max_length: '128'\n  init: 7\n", encoding="utf-8")
    cfg = resolve(FinetuneConfig, load_yaml(str(recipe))["finetune"])
    assert (cfg.lr, cfg.epochs, cfg.max_length, cfg.init) == (5e-5, 3, 128, "7")
    assert type(cfg.lr) is float and type(cfg.epochs) is int
    assert "epochs: 3.0" in yaml_text({"finetune": load_yaml(str(recipe))["finetune"]})  # a section dumps as read
    for line, message in (("epochs: two", "epochs: 'two' is not an int"),
                          ("lr: [1, 2]", "lr: [1, 2] is not a float"),
                          ("resume: 'yes'", "resume: 'yes' is not a bool"),
                          ("epochs: 2.5", "epochs: 2.5 is not an int")):
        recipe.write_text(f"finetune:\n  {line}\n", encoding="utf-8")
        with pytest.raises(BigModelError) as caught:
            resolve(FinetuneConfig, load_yaml(str(recipe))["finetune"])
        assert str(caught.value) == f"config file {recipe}, finetune: {message}"


@pytest.mark.parametrize("verb,module", [("serve", "bigmodel.serve.app"), ("explain", "bigmodel.infer.explain")])
def test_a_broken_import_is_not_reported_as_a_missing_extra(verb, module, trained_run, monkeypatch):
    """FastAPI and Captum are installed here: an ImportError inside bigmodel's own chain is a bug and keeps
    its traceback, instead of telling the user to install what they have."""
    from bigmodel.cli import main

    monkeypatch.setitem(sys.modules, module, None)  # importing it now fails, as a broken module would
    with pytest.raises(ImportError, match=module):
        main([verb, "--ckpt", str(trained_run), *(["--text", "hi"] if verb == "explain" else [])])


def test_every_verb_takes_a_recipe_whose_section_sets_its_flags(trained_run, shakespeare_char, tmp_path):
    from bigmodel.cli import VERBS, build_parser

    parser = build_parser()
    for verb in VERBS:  # each verb's parser has --config (argparse would exit 2 on an unknown flag)
        args = parser.parse_args([verb, "--config", "x.yaml"] + (["code"] if verb == "dataset" else [])
                                 + (["list"] if verb == "registry" else []))
        assert args.config == "x.yaml"
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(f"evaluate:\n  ckpt: {trained_run}\n  data: {shakespeare_char}\n  split: train\n"
                      f"  out: {tmp_path / 'yaml'}\n", encoding="utf-8")
    ev = run_cli("evaluate", "--config", str(recipe), "--split", "val")  # the flag wins over the recipe
    assert ev.returncode == 0, ev.stderr
    figures = json.loads((tmp_path / "yaml" / "metrics.json").read_text())
    assert figures["source"].endswith("(val)") and figures["tokens"] > 10_000
    recipe.write_text("evaluate:\n  task: translate\n", encoding="utf-8")
    _one_line_error(run_cli("evaluate", "--config", str(recipe), "--data", "x"), "--task must be one of",
                    "'translate'")
    recipe.write_text("evaluate:\n  split: val\n", encoding="utf-8")
    _one_line_error(run_cli("evaluate", "--config", str(recipe)), "evaluate needs --data",
                    "`data:` under `evaluate:`")
    _one_line_error(run_cli("dataset", "cooking", "--out", str(tmp_path / "d")), "NAME must be one of code",
                    "'cooking'")  # a positional value is named as `--help` shows it, not as a flag
