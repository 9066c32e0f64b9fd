"""The command line as users type it: the docs' exact shard strings reach the trainer as one pattern, streams
are addressed by name across stages, giving shards turns the synthetic data off, and mistakes are one line."""
from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

from momo_ds.config import ConfigError, load_recipe, packaged_recipe
from momo_ds.overrides import split_shard_list
from momo_ds.engine.recipes import SYNTHETIC_OFF, load_run_recipes
from momo_ds.engine.run import parse_args, stage_recipes

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "tools" / "pretrain.py", ROOT / "momo_ds" / "engine" / "run.py",
        *sorted((ROOT / "momo_ds" / "configs").glob("*/stage*.yaml"))]


def documented_commands() -> list[tuple[str, str]]:
    """(file, command line from ``tools/pretrain.py`` on) of every documented pretrain command, continuation
    lines joined and comment markers of the recipe headers removed."""
    out = []
    for doc in DOCS:
        lines = [re.sub(r"^#\s?", "", line) if doc.suffix == ".yaml" else line
                 for line in doc.read_text().splitlines()]
        joined, buf = [], ""
        for line in lines:
            if line.rstrip().endswith("\\"):
                buf += line.rstrip()[:-1] + " "
                continue
            joined.append(buf + line)
            buf = ""
        for line in joined:
            if "tools/pretrain.py" in line and re.search(r"--set\s+'?[a-z_]+\.", line):  # not the usage synopsis
                out.append((doc.name, line[line.index("tools/pretrain.py") + len("tools/pretrain.py"):]))
    return out


def shell_words(command: str) -> list[str]:
    """The argv bash makes of ``command`` (quotes, brace expansion and all), as the user's shell would."""
    if shutil.which("bash") is None:
        pytest.skip("bash not available")
    proc = subprocess.run(["bash", "-c", f"printf '%s\\0' {command}"], capture_output=True, check=True)
    return [w.decode() for w in proc.stdout.split(b"\0")[:-1]]


def test_docs_show_pretrain_commands_with_shards():
    cmds = documented_commands()
    assert len(cmds) >= 8 and sum("{" in c for _, c in cmds) >= 8, cmds


@pytest.mark.parametrize("doc, command", documented_commands())
def test_documented_shard_strings_reach_the_trainer_as_one_pattern(doc, command):
    args = parse_args(shell_words(command))
    recipes, _ = load_run_recipes(stage_recipes(args.config, args.stage), args.overrides)
    by_name = {s.name: s.shards for r in recipes for s in r.data.streams if s.shards}
    given = [o for o in args.overrides if ".shards=" in o]
    assert given, command
    for item in given:
        key, raw = item.split("=", 1)
        assert by_name[key.split(".")[2]] == split_shard_list(raw)
        assert len(split_shard_list(raw)) == 1 and raw.count("{") <= 1  # one pattern, never brace-expanded


def test_unquoted_brace_pattern_is_an_error_not_last_wins():
    words = shell_words("--set data.streams.image.shards=[/data/in1k/train-{000000..000003}.tar]")
    assert len(words) == 5  # the shell made four overrides of it
    args = parse_args(words)
    with pytest.raises(ConfigError, match="given 4 times.*quote it") as e:
        load_run_recipes(stage_recipes("tiny", "1"), args.overrides)
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("raw, expected", [
    ("[/d/train-{000000..001281}.tar]", ["/d/train-{000000..001281}.tar"]),
    ("/d/train-{000000..001281}.tar", ["/d/train-{000000..001281}.tar"]),
    ("['/a/x-{0..3}.tar', \"/b/y.tar\"]", ["/a/x-{0..3}.tar", "/b/y.tar"]),
    ("[/a/{train,val}-{0..3}.tar, pipe:curl -s http://h/s-{0..9}.tar]",
     ["/a/{train,val}-{0..3}.tar", "pipe:curl -s http://h/s-{0..9}.tar"]),
    ("[]", []),
])
def test_shard_lists_are_split_outside_braces(raw, expected):
    assert split_shard_list(raw) == expected
    assert load_recipe(packaged_recipe("tiny", 1), [f"data.streams.0.shards={raw}"]).data.streams[0].shards == expected


def test_streams_by_name_across_three_stages():
    overrides = ["data.streams.image.shards=[/i/{0..9}.tar]", "data.streams.text.shards=[/t/{0..9}.tar]",
                 "data.streams.pair.shards=[/p/{0..9}.tar]", "data.tokenizer=/tok/vocab.txt"]
    recipes, notes = load_run_recipes(stage_recipes("tiny", "all"), overrides)
    shards = [{s.name: s.shards for s in r.data.streams} for r in recipes]
    assert shards == [{"image": ["/i/{0..9}.tar"]},
                      {"image": ["/i/{0..9}.tar"], "text": ["/t/{0..9}.tar"]},
                      {"text": ["/t/{0..9}.tar"], "pair": ["/p/{0..9}.tar"]}]
    assert all(not r.data.synthetic and r.data.tokenizer == "/tok/vocab.txt" for r in recipes)
    assert SYNTHETIC_OFF in notes
    untouched, notes = load_run_recipes(stage_recipes("tiny", "all"), [])
    assert all(r.data.synthetic for r in untouched) and notes == []


@pytest.mark.parametrize("overrides, needle", [
    (["data.streams.images.shards=[/x.tar]"],
     "no stage of this run has a stream named 'images' (streams: image, text, pair)"),
    (["data.streams.0.shards=[/x.tar]"], "stream 0 is not the same stream in every stage (image in stage 1, image in "
                                         "stage 2, text in stage 3); address it by name: data.streams.<name>.shards"),
    (["data.streams.pair.shards=[/p.tar]"], "data.tokenizer=synthetic is the vocabulary of the built-in"),
    (["train.betas=[0.9, 0.99"], "train.betas=[0.9, 0.99: the value is not valid YAML"),
])
def test_run_override_mistakes_are_one_line(overrides, needle):
    with pytest.raises(ConfigError) as e:
        load_run_recipes(stage_recipes("tiny", "all"), overrides)
    assert needle in str(e.value) and "\n" not in str(e.value)


def test_index_addressing_still_works_in_one_stage():
    (r,), _ = load_run_recipes(stage_recipes("tiny", "3"), ["data.streams.1.batch_size=8"])
    assert r.data.streams[1].name == "pair" and r.data.streams[1].batch_size == 8


def test_max_steps_below_warmup_is_warned():
    _, notes = load_run_recipes(stage_recipes("base", "1"), ["train.max_steps=20"])
    assert any("train.max_steps=20 is below train.warmup_steps=12500" in n for n in notes)


@pytest.mark.parametrize("stage", ["two", "4"])
def test_bad_stage_lists_the_valid_values(stage, capsys):
    with pytest.raises(SystemExit) as e:
        parse_args(["--stage", stage])
    assert e.value.code == 2
    assert "choose from '1', '2', '3', 'all'" in capsys.readouterr().err
