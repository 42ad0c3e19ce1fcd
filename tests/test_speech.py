"""Audio through the same Transformer: espeak-ng speech, a log-mel front end whose mask matches
its frames, keyword spotting and CTC recognition through the CLI, and one-line errors for bad
audio (not WAV, wrong rate, silent, too long)."""

from __future__ import annotations

import csv
import json
import random
import shutil

import numpy as np
import pytest
import soundfile as sf
import torch
import yaml

from .conftest import error_line, metric_rows, run_cli

AUDIO = {"frontend": "mel", "n_mels": 40, "block_size": 128, "n_layer": 2, "n_head": 4, "n_embd": 64,
         "causal": False}
WORDS = ["yes", "no", "up", "down"]


@pytest.fixture(scope="module")
def espeak():
    if shutil.which("espeak-ng") is None:
        pytest.fail("espeak-ng is missing: apt-get install espeak-ng (the README's test command does)")


@pytest.fixture(scope="module")
def keywords(espeak, tmp_path_factory):
    """Four words, 40 training clips each; validation clips in voice variants training never uses."""
    from bigmodel.data.builtin_media import random_voice, synthesize

    out = tmp_path_factory.mktemp("keywords")
    rng = random.Random(0)
    jobs = [(out / split / w / f"{i}.wav", w, random_voice(rng, split))
            for split, n in (("train", 40), ("val", 10)) for w in WORDS for i in range(n)]
    synthesize(jobs)
    return out


def recipe(path, model: dict, finetune: dict):
    path.write_text(yaml.safe_dump({"model": model, "finetune": finetune}))
    return str(path)


def test_held_out_voice_variants_are_never_in_training():
    from bigmodel.data.builtin_media import variants_of

    train, val, test = (set(variants_of(s)) for s in ("train", "val", "test"))
    assert train and val and test and not (train & val) and not (train & test) and not (val & test)


def test_the_mask_covers_exactly_the_front_ends_frames_and_padding_changes_nothing(tmp_path):
    from bigmodel.config import ModelConfig
    from bigmodel.data.inputs import AudioInputs
    from bigmodel.model.heads import HeadConfig, SequenceModel
    from bigmodel.model.transformer import Transformer

    torch.manual_seed(0)
    config = ModelConfig(**AUDIO)
    model = SequenceModel(Transformer(config), HeadConfig(labels=["a", "b", "c"]), dropout=0.0).eval()
    inputs = AudioInputs(config)
    for samples in (1, 159, 160, 161, 320, 8000, 15999):
        frames = model.backbone.frontend(torch.randn(1, samples))
        assert frames.shape[1] == inputs.positions(samples)
    short = torch.sin(torch.arange(5000) * 0.05) * torch.rand(5000) * 0.3
    x, mask = inputs.batch([short, torch.randn(16000) * 0.1], "cpu")
    assert mask.sum(1).tolist() == [inputs.positions(5000), inputs.positions(16000)]
    with torch.no_grad():
        alone = model(*inputs.batch([short], "cpu"))[0]
        batched = model(x, mask)[0]
        unmasked = model(x, torch.ones_like(mask))[0]
    # the padded clip's scores come from its own frames (attention and pooling are masked); what is
    # left is the convolutions' window at its last frame, which sees the padding's silence
    assert (alone - batched).abs().max() < 0.05 * (alone - unmasked).abs().max()


def test_keyword_spotting_learns_words_in_unheard_voices(keywords, tmp_path):
    config = recipe(tmp_path / "kws.yaml", AUDIO, {
        "task": "classify", "train": str(keywords / "train"), "val": str(keywords / "val"),
        "out": str(tmp_path / "run"), "epochs": 12, "lr": 2e-3, "batch_size": 16, "augment": True, "patience": 20})
    done = run_cli("finetune", "--config", config)
    assert done.returncode == 0, done.stderr[-2000:]
    rows = metric_rows(tmp_path / "run")[1:]  # after step 0, the starting point, which trained on nothing
    assert rows[-1]["train_loss"] < rows[0]["train_loss"] / 2
    assert max(r["accuracy"] for r in rows) >= 0.7  # four words: chance is 0.25
    clip = sorted((keywords / "val" / "down").glob("*.wav"))[0]
    one = run_cli("predict", "--ckpt", str(tmp_path / "run"), "--input", str(clip))
    assert one.returncode == 0, one.stderr[-2000:]
    assert set(json.loads(one.stdout)["probabilities"]) == set(WORDS)


def test_ctc_training_lowers_its_loss_and_predict_prints_a_transcript(espeak, tmp_path):
    from bigmodel.data.builtin_media import random_voice, synthesize

    rng = random.Random(1)
    phrases = ["go up", "go down", "stop now", "turn left", "turn right", "yes please"]
    rows = {split: [(f"clips/{split}{i}.wav", phrases[i % len(phrases)]) for i in range(n)]
            for split, n in (("train", 60), ("val", 12))}
    synthesize([(tmp_path / p, t, random_voice(rng, split)) for split, r in rows.items() for p, t in r])
    for split, r in rows.items():
        with open(tmp_path / f"{split}.csv", "w", newline="") as f:
            csv.writer(f).writerows([("audio", "text"), *r])
    config = recipe(tmp_path / "asr.yaml", {**AUDIO, "block_size": 256}, {
        "task": "ctc", "train": str(tmp_path / "train.csv"), "val": str(tmp_path / "val.csv"),
        "source_column": "audio", "target_column": "text", "out": str(tmp_path / "run"), "epochs": 15,
        "lr": 2e-3, "batch_size": 8, "patience": 20})
    done = run_cli("finetune", "--config", config)
    assert done.returncode == 0, done.stderr[-2000:]
    metrics = metric_rows(tmp_path / "run")[1:]  # after step 0
    assert metrics[-1]["train_loss"] < metrics[0]["train_loss"] / 2 and metrics[-1]["cer"] < 100
    head = json.loads((tmp_path / "run" / "best" / "head.json").read_text())
    assert head["task"] == "ctc" and head["labels"][0] == "<blank>" and " " in head["labels"]
    said = run_cli("predict", "--ckpt", str(tmp_path / "run"), "--input", str(tmp_path / rows["val"][0][0]))
    assert said.returncode == 0, said.stderr[-2000:]
    assert set(json.loads(said.stdout)["transcript"]) <= set(head["labels"])
    scored = run_cli("evaluate", "--task", "ctc", "--ckpt", str(tmp_path / "run"), "--data",
                     str(tmp_path / "val.csv"), "--source-column", "audio", "--target-column", "text",
                     "--out", str(tmp_path / "eval"))
    assert scored.returncode == 0, scored.stderr[-2000:]
    figures = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert figures["examples"] == 12 and 0 <= figures["cer"] and "CER" in scored.stdout
    lexicon = run_cli("evaluate", "--task", "ctc", "--ckpt", str(tmp_path / "run"), "--data",
                      str(tmp_path / "val.csv"), "--source-column", "audio", "--target-column", "text",
                      "--lexicon", str(tmp_path / "train.csv"), "--out", str(tmp_path / "eval_lexicon"))
    assert lexicon.returncode == 0, lexicon.stderr[-2000:]
    decoded = json.loads((tmp_path / "eval_lexicon" / "metrics.json").read_text())
    assert decoded["cer"] <= figures["cer"]  # spelling only known words cannot be worse here
    words = {w for phrase in phrases for w in phrase.split()}
    for line in (tmp_path / "eval_lexicon" / "outputs.jsonl").read_text().splitlines():
        assert set(json.loads(line)["transcript"].split()) <= words


def test_greedy_ctc_decoding_merges_repeats_and_drops_blanks():
    from bigmodel.infer.ctc import greedy_decode

    alphabet = ["<blank>", "a", "b"]
    frames = [1, 1, 0, 1, 2, 2, 0, 0, 2, 1]  # a a _ a b b _ _ b | a (beyond the length)
    scores = torch.nn.functional.one_hot(torch.tensor(frames), 3).float()
    assert greedy_decode(scores, 9, alphabet) == "aabb"


def test_lexicon_decoding_spells_known_words_where_greedy_spells_by_ear():
    from bigmodel.infer.ctc import WordModel, greedy_decode, lexicon_decode

    alphabet = ["<blank>", " ", "d", "l", "o", "r", "u", "w"]
    frames = [(7, 0.9), (0, 0.9), (6, 0.5), (0, 0.9), (5, 0.9), (3, 0.9), (2, 0.9), (1, 0.9), (7, 0.9), (4, 0.9),
              (5, 0.9), (2, 0.9)]  # "w_u_rld wor d": greedy hears "wurld word"
    scores = torch.full((len(frames), len(alphabet)), 0.02)
    for t, (c, p) in enumerate(frames):
        scores[t, c] = p
    scores[2, 4] = 0.4  # "o" was nearly as likely as "u"
    log_probs = (scores / scores.sum(-1, keepdim=True)).log()
    assert greedy_decode(log_probs, len(frames), alphabet) == "wurld word"
    words = WordModel.from_texts(["world word", "word world", "old world"], alphabet)
    assert lexicon_decode(log_probs, alphabet, words, beam=16) == "world word"
    assert words.logp("old", "world") > words.logp("old", "word")  # the bigram counts


def test_bad_audio_gets_one_line_and_exit_1(tmp_path):
    from bigmodel.config import ModelConfig
    from bigmodel.model.checkpoint import save_checkpoint
    from bigmodel.model.heads import HeadConfig, SequenceModel
    from bigmodel.model.transformer import Transformer

    ckpt = tmp_path / "ckpt"
    save_checkpoint(ckpt, SequenceModel(Transformer(ModelConfig(**AUDIO)), HeadConfig(labels=WORDS)), None, {})
    tone = (0.3 * np.sin(np.arange(16000) * 0.2)).astype(np.float32)
    cases = {"song.flac": (tone, 16000, "FLAC"), "fast.wav": (tone, 22050, "WAV"),
             "quiet.wav": (np.zeros(16000, np.float32), 16000, "WAV"),
             "long.wav": (np.tile(tone, 4), 16000, "WAV")}
    for name, (wave, rate, kind) in cases.items():
        sf.write(tmp_path / name, wave, rate, format=kind)
    (tmp_path / "text.wav").write_text("not audio at all")
    expected = {"song.flac": "FLAC audio", "fast.wav": "22050 Hz", "quiet.wav": "silent",
                "long.wav": "longer than the model takes", "text.wav": "not a WAV file"}
    for name, words in expected.items():
        path = tmp_path / name
        listed = tmp_path / f"{name}.txt"
        listed.write_text(str(path) + "\n")
        done = run_cli("predict", "--ckpt", str(ckpt), "--input", str(listed))
        line = error_line(done)
        assert str(path) in line and words in line, done.stderr
