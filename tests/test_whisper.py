"""Whisper in: OpenAI's weights from the CTranslate2 folders faster-whisper runs, its log-mel features, the same
logits as transformers on our export, the same greedy tokens as CTranslate2's own decoder on the same features,
and real human recordings (FLAC, WAV, MP3, Opus at 16 to 48 kHz) transcribed from the command line."""

import csv
import json

import ctranslate2
import numpy as np
import pytest
import torch
import transformers
from jiwer import wer

from bigmodel.infer.whisper import WhisperVocab, read_speech, transcribe, whisper_rules, windows
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.formats import find_pretrained, to_hf

from .conftest import SHARED, error_line, run_cli, shared_file

SPEECH = SHARED / "speech_real"


def manifest() -> list[dict]:
    return list(csv.DictReader(shared_file(SPEECH / "manifest.tsv").open(encoding="utf-8"), delimiter="\t"))


def plain(text: str) -> str:
    """Lower case, letters, digits and apostrophes: enough normalisation for these plain sentences."""
    return " ".join("".join(c for c in text.lower().replace("-", " ") if c.isalnum() or c in " '").split())


@pytest.fixture(scope="module")
def tiny():
    model, tok, folder = load_checkpoint("whisper-tiny.en")
    return model, tok, WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size), folder


def test_features_are_openai_s_log_mel(tiny):
    wave = read_speech(SPEECH / "61-70968-0000.flac")
    theirs = transformers.WhisperFeatureExtractor(feature_size=80)(wave, sampling_rate=16000, return_tensors="np")
    ours = windows(wave, 80)[0].numpy()
    assert ours.shape == theirs.input_features[0].shape == (80, 3000)
    assert np.abs(ours - theirs.input_features[0]).max() <= 1e-4


def test_logits_match_transformers_on_our_export(tiny, tmp_path):
    model, tok, _, folder = tiny
    to_hf(model, tmp_path / "hf", tok, folder)
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    mel = windows(read_speech(SPEECH / "mfa_whatscalled.flac"), 80)
    ids = torch.tensor([[50257, 50362, *tok.encode(" Montreal forced", add_special_tokens=False).ids]])
    with torch.no_grad():
        ours, _ = model(ids, memory=model.encode(mel))
        theirs = hf(input_features=mel, decoder_input_ids=ids).logits
    assert (ours - theirs).abs().max() <= 1e-3
    said = hf.generate(windows(read_speech(SPEECH / "61-70968-0000.flac"), 80))  # its own generate, as exported
    assert tok.decode(said[0].tolist()).strip().startswith("He began a confused complaint against the wizard")


def test_greedy_tokens_are_ctranslate2_s_on_the_same_features(tiny):
    """faster-whisper's engine, given our features, decodes the same tokens as we do: the model and the
    decoding rules (suppressed tokens, no blank first) are the same."""
    model, tok, vocab, folder = tiny
    rows = [r for r in manifest() if r["language"] == "en"][:6]
    waves = [read_speech(SPEECH / r["path"]) for r in rows]
    ours = transcribe(model, tok, vocab, waves)
    engine = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    mel = ctranslate2.StorageView.from_array(torch.cat([windows(w, 80) for w in waves]).numpy())
    theirs = engine.generate(mel, [[vocab.sot, vocab.no_timestamps]] * len(waves), beam_size=1, max_length=224)
    greedy = 0
    for mine, found in zip(ours, theirs, strict=True):
        [segment] = mine["segments"]  # each recording is shorter than 30 s
        if segment["temperature"] == 0.0:  # kept: it neither repeats itself nor is unlikely
            assert segment["text"] == tok.decode(found.sequences_ids[0]).strip()
            greedy += 1
    assert greedy >= 4


def test_real_recordings_are_transcribed_from_every_format(tmp_path):
    """The LibriSpeech sentence, the three Common Voice clips (MP3 at 48 kHz) and a plain aligner sentence."""
    rows = {r["path"]: r["text"] for r in manifest()}
    names = ["61-70968-0000.flac", "common_voice_en_22058267.mp3", "common_voice_en_22058264.mp3",
             "mfa_whatscalled.flac", "acoustic_corpus.wav"]
    listing = tmp_path / "files.txt"
    listing.write_text("".join(f"{SPEECH / name}\n" for name in names))
    done = run_cli("transcribe", "--ckpt", "whisper-tiny.en", "--input", str(listing), "--format", "json",
                   "--dtype", "fp32", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    said = {name: json.loads((tmp_path / "out" / f"{name.rsplit('.', 1)[0]}.json").read_text()) for name in names}
    assert said["61-70968-0000.flac"]["text"].startswith("He began a confused complaint against the wizard")
    assert plain(said["common_voice_en_22058267.mp3"]["text"]) in ("six", "6")  # Whisper writes numbers as digits
    assert plain(said["common_voice_en_22058264.mp3"]["text"]) == "no"
    assert wer(plain(rows["acoustic_corpus.wav"]), plain(said["acoustic_corpus.wav"]["text"])) < 0.35


def test_a_recording_longer_than_30_seconds_is_read_window_by_window(tmp_path):
    """A monologue padded to 30 s, then the LibriSpeech sentence: two windows, each transcribed in its place."""
    import soundfile as sf

    first = read_speech(SPEECH / "acoustic_corpus.wav")
    wave = np.concatenate([first, np.zeros(30 * 16000 - len(first), np.float32),
                           read_speech(SPEECH / "61-70968-0000.flac")])
    sf.write(tmp_path / "long.flac", wave, 16000)
    done = run_cli("transcribe", "--ckpt", "whisper-tiny.en", "--input", str(tmp_path / "long.flac"), "--format",
                   "json", "--dtype", "fp32")
    assert done.returncode == 0, done.stderr
    record = json.loads(done.stdout)
    assert record["duration"] == pytest.approx(len(wave) / 16000, abs=1e-3)
    assert [(s["start"], s["end"]) for s in record["segments"]] == [(0.0, 30.0), (30.0, pytest.approx(34.91, abs=0.01))]
    assert record["segments"][1]["text"].startswith("He began a confused complaint")
    assert record["text"].endswith(record["segments"][1]["text"])


def test_whisper_base_detects_spanish_and_translates_it():
    model, tok, folder = load_checkpoint("whisper-base")
    vocab = WhisperVocab.of(tok, whisper_rules(folder), model.config.vocab_size)
    wave = read_speech(SPEECH / "13697_11991_000000.opus")
    [heard] = transcribe(model, tok, vocab, [wave])
    assert heard["language"] == "es" and "sorpresa" in heard["text"].lower()
    [english] = transcribe(model, tok, vocab, [wave], task="translate")
    assert english["language"] == "es" and "surprise" in english["text"].lower(), english


def test_bad_recordings_are_one_line_each_and_the_rest_are_transcribed(tmp_path):
    (tmp_path / "notes.wav").write_text("not audio")
    import soundfile as sf

    sf.write(tmp_path / "quiet.wav", np.zeros(16000, dtype=np.float32), 16000)
    listing = tmp_path / "files.txt"
    listing.write_text(f"{tmp_path / 'notes.wav'}\n{SPEECH / 'common_voice_en_22058267.mp3'}\n{tmp_path / 'quiet.wav'}"
                       f"\n{tmp_path / 'missing.flac'}\n")
    done = run_cli("transcribe", "--ckpt", "whisper-tiny.en", "--input", str(listing), "--dtype", "fp32")
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1 and "Traceback" not in done.stderr, done.stderr
    assert any("notes.wav: not audio" in line for line in lines) and any("quiet.wav: silent" in line for line in lines)
    assert any("missing.flac: no such file" in line for line in lines)
    assert lines[-1].endswith("3 of 4 recordings could not be read (above); the rest are done")
    assert done.stdout.count("\t") == 1 and plain(done.stdout.split("\t")[1]) in ("six", "6")  # path, tab, text
    assert "--language xx: Whisper knows" in error_line(run_cli("transcribe", "--ckpt", "whisper-base", "--input",
                                                                 str(listing), "--language", "xx"))
    assert "English-only" in error_line(run_cli("transcribe", "--ckpt", "whisper-tiny.en", "--input", str(listing),
                                                "--task", "translate"))
    assert str(find_pretrained("whisper-base")).endswith("data")
