"""Whisper in: OpenAI's weights from the CTranslate2 folders faster-whisper runs, its log-mel features, the same
logits as transformers on our export, the same greedy tokens as CTranslate2's own decoder on the same features,
and real human recordings (FLAC, WAV, MP3, Opus at 16 to 48 kHz) transcribed from the command line."""

import csv
import json
import re
from pathlib import Path

import ctranslate2
import numpy as np
import pytest
import torch
import transformers
import whisper
from jiwer import wer

from bigmodel.infer.whisper import WhisperVocab, padded_mel, read_speech, transcribe, whisper_rules, window
from bigmodel.model.checkpoint import load_checkpoint
from bigmodel.model.formats import find_pretrained, to_hf

from .conftest import SHARED, error_line, run_cli, shared_file

SPEECH = SHARED / "speech_real"
TEMPERATURES_GREEDY = (0.0,)  # no sampled fallback: the same text whatever else decodes beside it


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
    ours = padded_mel(wave, 80)[:, :3000].numpy()
    assert ours.shape == theirs.input_features[0].shape == (80, 3000)
    assert np.abs(ours - theirs.input_features[0]).max() <= 1e-4
    openai = whisper.log_mel_spectrogram(torch.from_numpy(wave), padding=whisper.audio.N_SAMPLES)[:, :3000]
    assert np.abs(ours - openai.numpy()).max() <= 1e-4  # as OpenAI's transcribe computes them


def test_logits_match_transformers_on_our_export(tiny, tmp_path):
    model, tok, _, folder = tiny
    to_hf(model, tmp_path / "hf", tok, folder)
    hf = transformers.WhisperForConditionalGeneration.from_pretrained(tmp_path / "hf").eval()
    mel = padded_mel(read_speech(SPEECH / "mfa_whatscalled.flac"), 80)[None, :, :3000]
    ids = torch.tensor([[50257, 50362, *tok.encode(" Montreal forced", add_special_tokens=False).ids]])
    with torch.no_grad():
        ours, _ = model(ids, memory=model.encode(mel))
        theirs = hf(input_features=mel, decoder_input_ids=ids).logits
    assert (ours - theirs).abs().max() <= 1e-3
    librispeech = padded_mel(read_speech(SPEECH / "61-70968-0000.flac"), 80)[None, :, :3000]
    said = hf.generate(librispeech)  # its own generate, as exported
    assert tok.decode(said[0].tolist()).strip().startswith("He began a confused complaint against the wizard")
    back, back_tok, back_folder = load_checkpoint(tmp_path / "hf")  # and imported again, rules and all
    with torch.no_grad():
        assert (back(ids, memory=back.encode(mel))[0] - ours).abs().max() <= 1e-4
    vocab = WhisperVocab.of(back_tok, whisper_rules(back_folder), back.config.vocab_size)
    [heard] = transcribe(back, back_tok, vocab, [read_speech(SPEECH / "61-70968-0000.flac")])
    assert heard["text"].startswith("He began a confused complaint against the wizard")


def test_an_openai_checkpoint_imports_to_openai_s_own_logits(tmp_path):
    """A `.pt` as OpenAI ships them (dims and fp16 weights, written by openai-whisper's own model class) gives
    that model's logits; the tokenizer and rules come from the packaged Whisper of the same vocabulary."""
    from whisper.model import ModelDimensions
    from whisper.model import Whisper as OpenAIWhisper

    torch.manual_seed(0)
    dims = ModelDimensions(n_mels=80, n_audio_ctx=1500, n_audio_state=64, n_audio_head=2, n_audio_layer=2,
                           n_vocab=51864, n_text_ctx=448, n_text_state=64, n_text_head=2, n_text_layer=2)
    reference = OpenAIWhisper(dims).eval()
    weights = {name: tensor.half() for name, tensor in reference.state_dict().items()}
    weights["decoder.positional_embedding"] = torch.randn(448, 64).half()  # the reference leaves it unset
    reference.load_state_dict({name: tensor.float() for name, tensor in weights.items()})
    torch.save({"dims": vars(dims), "model_state_dict": weights}, tmp_path / "tiny.pt")
    model, tok, folder = load_checkpoint(tmp_path / "tiny.pt")
    mel = padded_mel(read_speech(SPEECH / "mfa_whatscalled.flac"), 80)[None, :, :3000]
    ids = torch.tensor([[50257, 50362, *tok.encode(" Montreal forced", add_special_tokens=False).ids]])
    with torch.no_grad():
        ours, _ = model(ids, memory=model.encode(mel))
        assert (ours - reference(mel, ids)).abs().max() <= 1e-3
    assert whisper_rules(folder)["suppress_ids"] == whisper_rules(find_pretrained("whisper-tiny.en"))["suppress_ids"]
    torch.save({"dims": vars(dims)}, tmp_path / "bad.pt")
    assert "not an OpenAI Whisper checkpoint" in error_line(run_cli("transcribe", "--ckpt", str(tmp_path / "bad.pt"),
                                                                     "--input", str(SPEECH / "falsetto.flac")))


def test_greedy_tokens_are_ctranslate2_s_on_the_same_features(tiny):
    """faster-whisper's engine, given our features, decodes the same tokens as we do: the model and the
    decoding rules (suppressed tokens, no blank first) are the same."""
    model, tok, vocab, folder = tiny
    rows = [r for r in manifest() if r["language"] == "en"][:6]
    waves = [read_speech(SPEECH / r["path"]) for r in rows]
    ours = transcribe(model, tok, vocab, waves, timestamps=False)
    engine = ctranslate2.models.Whisper(str(folder), device="cpu", compute_type="float32", intra_threads=1)
    mel = torch.stack([window(padded_mel(w, 80), 0, len(w) // 160) for w in waves])
    theirs = engine.generate(ctranslate2.StorageView.from_array(mel.numpy()), [[vocab.sot, vocab.no_timestamps]]
                             * len(waves), beam_size=1, max_length=224)
    greedy = 0
    for mine, found in zip(ours, theirs, strict=True):
        [segment] = mine["segments"]  # each recording is shorter than 30 s
        if segment["temperature"] == 0.0:  # kept: it neither repeats itself nor is unlikely
            assert segment["text"] == tok.decode(found.sequences_ids[0]).strip()
            greedy += 1
    assert greedy >= 4


def test_timed_segments_are_faster_whisper_s(tiny):
    """With timestamps (both tools' default), a 27-s monologue: the same segments, times and scores as
    faster-whisper on the same weights."""
    from faster_whisper import WhisperModel

    model, tok, vocab, folder = tiny
    wave = read_speech(SPEECH / "acoustic_corpus.wav")
    [ours] = transcribe(model, tok, vocab, [wave])
    peer = WhisperModel(str(folder), device="cpu", compute_type="float32", cpu_threads=1)
    theirs = list(peer.transcribe(wave, beam_size=1, condition_on_previous_text=False)[0])
    assert len(ours["segments"]) == len(theirs) >= 4
    for mine, seg in zip(ours["segments"], theirs, strict=True):
        assert mine["text"] == seg.text.strip()
        end = min(seg.end, len(wave) / 16000)  # theirs may end after the recording does
        assert mine["start"] == pytest.approx(seg.start) and mine["end"] == pytest.approx(end, abs=1e-3)
        assert mine["avg_logprob"] == pytest.approx(seg.avg_logprob, abs=1e-3)


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
    """The monologue, 1 s of silence, then the LibriSpeech sentence across the 30-s mark: the second window
    starts where the first one's last whole segment ended (not at 30 s), so the sentence is heard whole."""
    import soundfile as sf

    first = read_speech(SPEECH / "acoustic_corpus.wav")
    gap = np.zeros(16000, np.float32)
    wave = np.concatenate([first, gap, read_speech(SPEECH / "61-70968-0000.flac")])
    sf.write(tmp_path / "long.flac", wave, 16000)
    said = {}
    for kind in ("json", "srt", "vtt"):
        done = run_cli("transcribe", "--ckpt", "whisper-tiny.en", "--input", str(tmp_path / "long.flac"), "--format",
                       kind, "--dtype", "fp32")
        assert done.returncode == 0, done.stderr
        said[kind] = done.stdout
    record = json.loads(said["json"])
    assert record["duration"] == pytest.approx(len(wave) / 16000, abs=1e-3)
    last = record["segments"][-1]
    assert last["text"].startswith("He began a confused complaint against the wizard")
    assert last["text"].endswith("on the left.") and 0 < last["seek"] < 3000  # a seek the timestamps chose
    assert last["start"] == pytest.approx((len(first) + len(gap)) / 16000, abs=1.0)
    starts = [s["start"] for s in record["segments"]]
    assert starts == sorted(starts) and record["text"].endswith(last["text"])
    cues = said["srt"].strip().split("\n\n")
    assert len(cues) == len(record["segments"]) and cues[0].startswith("1\n00:00:00,000 --> 00:00:0")
    assert said["vtt"].startswith("WEBVTT\n\n00:00:00.000 --> ") and last["text"] in said["vtt"]


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


def test_our_english_normaliser_writes_what_whisper_s_does():
    """Every English reference of speech_real and sentences full of numbers, contractions and titles: the same
    text as transformers' copy of OpenAI's normaliser (without its British-spelling list, as ours)."""
    from transformers.models.whisper.english_normalizer import EnglishTextNormalizer

    from bigmodel.evaluate.asr import normalize_english

    theirs = EnglishTextNormalizer({})
    sentences = [r["text"] for r in manifest() if r["language"] == "en"] + [
        "Mr. Smith's 1,000 cats won't eat (he says) [laughter] um, at 3.5 percent.", "one two three",
        "nineteen ninety five", "two thousand and five", "the twenty third of them, first and second",
        "I've got two thousand nine hundred and ninety nine problems", "five dollars", "three point five percent",
        "one of them", "sixes and twenties", "the eleventh hour", "Café naïve façade, Dr. Who Jr.", "forty-two"]
    for sentence in sentences:
        assert normalize_english(sentence) == theirs(sentence), sentence


def test_evaluate_asr_scores_a_manifest_file_by_file(tmp_path):
    rows = {r["path"]: r for r in manifest()}
    names = ["61-70968-0000.flac", "mfa_whatscalled.flac", "common_voice_en_22058264.mp3", "13697_11991_000000.opus"]
    table = tmp_path / "speech.tsv"
    lines = [f"{SPEECH / n}\t{rows[n]['language']}\t{rows[n]['text']}" for n in names] + ["gone.wav\ten\tnothing"]
    table.write_text("path\tlanguage\ttext\n" + "\n".join(lines) + "\n")
    done = run_cli("evaluate", "--task", "asr", "--ckpt", "whisper-tiny.en", "--data", str(table), "--dtype", "fp32",
                   "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    assert "gone.wav: no such file" in done.stderr and "1 in other languages left out" in done.stdout
    figures = json.loads((tmp_path / "out" / "metrics.json").read_text())
    per_file = [json.loads(line) for line in (tmp_path / "out" / "outputs.jsonl").read_text().splitlines()]
    assert figures["recordings"] == len(per_file) == 3 and figures["unreadable"] == 1
    assert per_file[0]["wer"] == 0.0 and figures["wer"] < figures["wer_raw"]  # punctuation and case no longer count
    assert 0 < figures["wer"] < 30


def test_int8_whisper_is_smaller_and_still_hears(tmp_path):
    """int8 linear layers (the token embedding, half of tiny.en, stays fp32): the same words."""
    names = ["61-70968-0000.flac", "mfa_whatscalled.flac", "common_voice_en_22058264.mp3"]
    rows = {r["path"]: r["text"] for r in manifest()}
    table = tmp_path / "speech.csv"
    table.write_text("audio,text\n" + "".join(f"{SPEECH / n},{rows[n]}\n" for n in names))
    done = run_cli("quantize", "--ckpt", "whisper-tiny.en", "--out", str(tmp_path / "int8"), "--text", str(table))
    assert done.returncode == 0, done.stderr
    line = done.stdout.strip().splitlines()[-1]
    sizes = [float(x) for x in line.split("weights ")[1].split(";")[0].replace("MB", "").split("->")]
    assert sizes[1] < 0.85 * sizes[0] and "WER % on" in line and "x real time" in line, line  # the embedding stays
    heard = run_cli("transcribe", "--ckpt", str(tmp_path / "int8"), "--input", str(SPEECH / names[0]))
    assert heard.stdout.startswith("He began a confused complaint against the wizard"), heard.stdout


def test_finetune_asr_learns_a_voice_whisper_mishears_and_keeps_real_speech(tmp_path):
    """LoRA with its defaults, one epoch on 48 clips of espeak-ng's voice: the held-out clips' WER falls,
    and the real LibriSpeech sentence is still heard right."""
    assert run_cli("dataset", "speech", "--out", str(tmp_path / "data"), "--examples", "48", "--source",
                   str(shared_file(SHARED / "sst2" / "train.tsv"))).returncode == 0
    done = run_cli("finetune", "--task", "asr", "--init", "whisper-tiny.en", "--method", "lora", "--epochs", "1",
                   "--train", str(tmp_path / "data" / "train.csv"), "--val", str(tmp_path / "data" / "test.csv"),
                   "--out", str(tmp_path / "run"))
    assert done.returncode == 0, done.stderr
    best = next(line for line in done.stdout.splitlines() if line.startswith("best:"))
    after, before = (float(x) for x in re.findall(r"\bwer ([0-9.]+)", best))
    assert after < before - 10, best
    heard = run_cli("transcribe", "--ckpt", str(tmp_path / "run" / "best"), "--input",
                    str(SPEECH / "61-70968-0000.flac"))  # in the training texts' style: lower case, unpunctuated
    assert plain(heard.stdout).startswith("he began a confused complaint against the wizard"), heard.stdout


def test_mandarin_syllables_come_out_as_chinese_characters(tmp_path):
    """whisper-base with --language zh on eight of gcin-voice's recorded syllables (Debian's package): Chinese
    characters, read back through pypinyin as bench/whisper_chinese.py scores them."""
    from pypinyin import Style, pinyin

    voice = Path("/usr/share/gcin-voice/ogg")
    if not voice.is_dir():
        pytest.fail(f"{voice} is missing: apt-get install gcin-voice (the README's test command does)")
    files = sorted(voice.glob("*/*.ogg"))[::300]
    listing = tmp_path / "syllables.txt"
    listing.write_text("".join(f"{f}\n" for f in files))
    done = run_cli("transcribe", "--ckpt", "whisper-base", "--input", str(listing), "--language", "zh", "--format",
                   "json", "--out", str(tmp_path / "out"), "--no-timestamps")
    assert done.returncode == 0, done.stderr
    heard = [json.loads(p.read_text()) for p in sorted((tmp_path / "out").glob("*.json"))]
    han = [[c for c in said["text"] if "\u4e00" <= c <= "\u9fff"] for said in heard]
    assert all(said["language"] == "zh" for said in heard) and sum(map(bool, han)) >= 6, heard
    assert all(pinyin(chars[0], style=Style.BOPOMOFO)[0][0] for chars in han if chars)
