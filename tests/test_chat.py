"""Chat fine-tuning and DPO: the loss falls on the assistant's tokens of the real template, packing changes
nothing but the padding, DPO's loss and rewards are the paper's, and training moves what it should."""

import dataclasses
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import transformers
from sacrebleu import sentence_chrf as chrf

from bigmodel.config import FinetuneConfig, GenerateConfig
from bigmodel.data.builtin_chat import preference_rows
from bigmodel.data.builtin_chat import tasks as chat_tasks
from bigmodel.evaluate.seq2seq import best_and_worst
from bigmodel.infer.chat import CHATML, replies, training_template
from bigmodel.model.checkpoint import Storage, load_backbone, load_checkpoint
from bigmodel.model.formats import find_pretrained, read_tokenizer, tokenizer_config
from bigmodel.tasks.chat import ChatTask, DPOTask, batch, encode_conversation

from .conftest import error_line, metric_rows, run_cli

WORDS = ["apple", "river", "stone", "cloud"]


@pytest.fixture(scope="module")
def smol_tokenizer():
    path = find_pretrained("smollm2")
    return read_tokenizer(path), tokenizer_config(path)


def tiny_llama(folder: Path, smol_tokenizer, template: bool = True) -> Path:
    """A small random Llama (transformers' own classes) with SmolLM2's tokenizer and, if asked, its template."""
    tok, special = smol_tokenizer
    torch.manual_seed(0)
    config = transformers.LlamaConfig(vocab_size=tok.get_vocab_size(), hidden_size=64, intermediate_size=128,
                                      num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                      max_position_embeddings=256, tie_word_embeddings=True)
    transformers.LlamaForCausalLM(config).save_pretrained(folder)
    tok.save(str(folder / "tokenizer.json"))
    kept = special if template else {k: v for k, v in special.items() if k != "chat_template"}
    (folder / "tokenizer_config.json").write_text(json.dumps(kept))
    return folder


def write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return path


def recall_rows() -> list[dict]:
    return [{"messages": [{"role": "user", "content": f"Word number {i}?"}, {"role": "assistant", "content": w}],
             "task": "recall"} for i, w in enumerate(WORDS)]


def test_assistant_tokens_alone_carry_loss_and_line_up_with_the_template(smol_tokenizer):
    tok, special = smol_tokenizer
    render, _ = training_template(special, "smollm2", "", "<|endoftext|>")
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"},
                {"role": "assistant", "content": "Hello! 你好 🤗"}, {"role": "user", "content": "2+2?"},
                {"role": "assistant", "content": "4"}]
    ids, labels = encode_conversation(tok, render, messages, 512)
    text = tok.decode(list(ids), skip_special_tokens=False)
    assert text == render(messages, add_generation_prompt=False)  # the template's own text, token for token
    taught = [i for i in labels if i != -1]
    assert tok.decode(taught, skip_special_tokens=False) == "Hello! 你好 🤗<|im_end|>4<|im_end|>"
    first = labels.index(next(i for i in labels if i != -1))
    assert tok.decode(list(ids[:first]), skip_special_tokens=False).endswith("<|im_start|>assistant\n")
    assert all(label in (-1, i) for i, label in zip(ids, labels, strict=True))
    ids, labels = encode_conversation(tok, render, messages, 512, only_last=True)
    assert tok.decode([i for i in labels if i != -1], skip_special_tokens=False) == "4<|im_end|>"
    # a model without a template learns ChatML, each turn ended by the end-of-text token
    render, config = training_template({}, "plain-model", "", "<|endoftext|>")
    assert config["chat_template"] == CHATML and config["eos_token"] == "<|endoftext|>"
    ids, labels = encode_conversation(tok, render, messages[1:3], 512)
    assert tok.decode([i for i in labels if i != -1], skip_special_tokens=False) == "Hello! 你好 🤗<|endoftext|>"


def test_packed_rows_score_each_conversation_as_if_alone(tmp_path, smol_tokenizer):
    folder = tiny_llama(tmp_path / "tiny", smol_tokenizer)
    rows = recall_rows() + [{"messages": [{"role": "user", "content": "A longer question about " + "things " * 9},
                                          {"role": "assistant", "content": "A longer answer, " + "more " * 7}]}]
    data = write_jsonl(tmp_path / "train.jsonl", rows)
    losses = []
    for packing in (False, True):
        cfg = FinetuneConfig(init=str(folder), task="chat", train=str(data), val=str(data), dtype="fp32",
                             packing=packing, max_length=128)
        backbone, tok, _ = load_backbone(str(folder), torch.device("cpu"), Storage.of(cfg))
        task = ChatTask(cfg, backbone.eval(), tok, tokenizer_config(folder))
        assert len(task.pack(task.train)) < len(task.train) and all(  # rows shared, none longer than allowed
            sum(len(ids) - 1 for ids, _ in group) <= 128 for group in task.pack(task.train))
        losses.append(task.loss(backbone, task.train, torch.device("cpu")).item())
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_activation_checkpointing_keeps_the_loss_and_gradients(tmp_path, smol_tokenizer):
    folder = tiny_llama(tmp_path / "tiny", smol_tokenizer)
    data = write_jsonl(tmp_path / "train.jsonl", recall_rows())
    cfg = FinetuneConfig(init=str(folder), task="chat", train=str(data), val=str(data), dtype="fp32")
    backbone, tok, _ = load_backbone(str(folder), torch.device("cpu"), Storage.of(cfg))
    task = ChatTask(cfg, backbone.train(), tok, tokenizer_config(folder))
    found, runs, block = [], [], backbone.blocks[0]
    block.forward = lambda *args, run=block.forward: runs.append(1) or run(*args)  # (hooks skip recomputation)
    for on in (False, True):
        backbone.activation_checkpointing = on
        backbone.zero_grad()
        runs.clear()
        loss = task.loss(backbone, task.train, torch.device("cpu"))
        loss.backward()
        found.append((loss.item(), [p.grad.clone() for p in backbone.parameters()]))
        assert len(runs) == (2 if on else 1)  # checkpointed: the block runs again in the backward pass
    assert found[0][0] == pytest.approx(found[1][0], rel=1e-6)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(found[0][1], found[1][1], strict=True))
    assert any(g.abs().sum() > 0 for g in found[1][1])


def test_dpo_loss_and_rewards_are_the_papers_on_one_batch(tmp_path, smol_tokenizer):
    folder = tiny_llama(tmp_path / "tiny", smol_tokenizer)
    pairs = [{"prompt": f"Word number {i}?", "chosen": w, "rejected": WORDS[i - 1]} for i, w in enumerate(WORDS)]
    data = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    cfg = FinetuneConfig(init=str(folder), task="dpo", method="full", train=str(data), val=str(data), dtype="fp32",
                         beta=0.5)
    backbone, tok, _ = load_backbone(str(folder), torch.device("cpu"), Storage.of(cfg))
    task = DPOTask(cfg, backbone.eval(), tok, tokenizer_config(folder))
    with torch.no_grad():  # the policy moves away from the frozen reference
        for p in backbone.blocks[0].parameters():
            p.add_(0.05 * torch.randn_like(p))

    def logp(model, row) -> float:  # summed log-probability of the answer's tokens, one position at a time
        ids, labels = row
        logits, _ = model(torch.tensor([ids]))
        logprobs = logits[0].double().log_softmax(-1)
        return sum(logprobs[t - 1, labels[t]].item() for t in range(1, len(ids)) if labels[t] != -1)

    expected, margins = 0.0, []
    with torch.no_grad():
        for chosen, rejected in task.train:
            margin = 0.5 * ((logp(backbone, chosen) - logp(task.reference, chosen))
                            - (logp(backbone, rejected) - logp(task.reference, rejected)))
            margins.append(margin)
            expected -= F.logsigmoid(torch.tensor(margin)).item()
        assert task.loss(backbone, task.train, torch.device("cpu")).item() == pytest.approx(expected, rel=1e-4)
        rewards = task.rewards(backbone, task.train, torch.device("cpu"))[0]
        # RPO: plus alpha times each chosen answer's mean negative log-likelihood per token
        task.cfg = dataclasses.replace(cfg, rpo_alpha=0.3)
        nll = sum(-logp(backbone, chosen) / sum(t != -1 for t in chosen[1][1:]) for chosen, _ in task.train)
        assert task.loss(backbone, task.train, torch.device("cpu")).item() == pytest.approx(expected + 0.3 * nll,
                                                                                           rel=1e-4)
    assert (rewards[:, 0] - rewards[:, 1]).tolist() == pytest.approx(margins, abs=1e-4)
    assert any(abs(m) > 1e-3 for m in margins)  # the perturbation made a difference to check
    assert batch(task.train[0], task.pad, torch.device("cpu"))["targets"].ne(-1).sum() > 0


def test_sft_teaches_the_answers_and_dpo_raises_chosen_over_rejected(tmp_path, smol_tokenizer):
    folder = tiny_llama(tmp_path / "tiny", smol_tokenizer, template=False)
    rows = recall_rows()
    train, val = write_jsonl(tmp_path / "train.jsonl", rows), write_jsonl(tmp_path / "val.jsonl", rows)
    common = ("--dtype", "fp32", "--max-length", "64", "--warmup", "0.05")
    chatml = tmp_path / "chatml.jinja"  # the untrained model has no template: evaluate it with the default
    chatml.write_text(CHATML)
    before = run_cli("evaluate", "--ckpt", str(folder), "--task", "chat", "--data", str(val), "--chat-template",
                     str(chatml), "--out", str(tmp_path / "before"), "--max-new-tokens", "4")
    assert before.returncode == 0, before.stderr
    done = run_cli("finetune", "--init", str(folder), "--task", "chat", "--train", str(train), "--val", str(val),
                   "--epochs", "60", "--batch-size", "4", "--lr", "1e-2", "--eval-every", "30",
                   "--out", str(tmp_path / "sft"), *common)
    assert done.returncode == 0, done.stderr
    sft = metric_rows(tmp_path / "sft")
    assert sft[-1]["val_loss"] < 0.5 * sft[0]["val_loss"] or sft[-1]["val_loss"] < 0.1, sft
    saved = json.loads((tmp_path / "sft" / "best" / "tokenizer_config.json").read_text())
    assert saved["chat_template"] == CHATML  # the default it trained with is the one it will chat with
    after = run_cli("evaluate", "--ckpt", str(tmp_path / "sft" / "best"), "--task", "chat", "--data", str(val),
                    "--out", str(tmp_path / "after"), "--max-new-tokens", "4", "--baseline", str(tmp_path / "before"))
    assert after.returncode == 0, after.stderr
    scores = [json.loads((tmp_path / name / "metrics.json").read_text()) for name in ("before", "after")]
    assert scores[0]["exact_match"] == 0 and scores[1]["exact_match"] >= 75, scores
    assert scores[1]["tasks"]["recall"]["examples"] == len(WORDS)
    versus, gained = scores[1]["versus"], round(scores[1]["exact_match"] * len(WORDS) / 100)
    assert versus["exact_gained"] == gained and versus["exact_lost"] == 0 and versus["chrf_change"] > 0, versus
    assert versus["exact_p"] == pytest.approx(2 * 0.5 ** gained) and "McNemar" in after.stdout  # two-sided, exact
    other = run_cli("evaluate", "--ckpt", str(tmp_path / "sft" / "best"), "--task", "chat", "--data", str(val),
                    "--max-examples", "2", "--max-new-tokens", "4", "--baseline", str(tmp_path / "before"),
                    "--out", str(tmp_path / "other"))
    assert other.returncode == 1 and "references are not the 2 of --data" in error_line(other), other.stderr

    # prompts of different lengths decode together as each would alone; its own wrong replies become pairs
    model, tok, sft = load_checkpoint(str(tmp_path / "sft" / "best"))[:3]
    asked = [r["messages"][:1] for r in rows] + [[{"role": "user", "content": "Word number 12, if you please?"}]]
    greedy = GenerateConfig(temperature=0.0, max_new_tokens=6)
    together = replies(model, tok, sft, asked, greedy)
    assert together == [replies(model, tok, sft, [a], greedy)[0] for a in asked]
    answers = [{"prompt": a[0]["content"], "answer": w, "task": "recall", "origin": "test"}
               for a, w in zip(asked, [*WORDS, "twelve"], strict=True)]
    own, left_out = preference_rows(answers, [(a["answer"], t) for a, t in zip(answers, together, strict=True)])
    right = sum(t.strip() == w for t, w in zip(together, [*WORDS, "twelve"], strict=True))
    assert left_out["right"] == right >= 3 and len(own) + right + left_out["empty"] == len(asked)
    assert all(pair["rejected"] in together and pair["rejected"] != pair["chosen"] for pair in own)
    # or a verifier ranks its own answers: the one nearest the reference over the farthest; a tie teaches nothing
    assert best_and_worst(["sevn", "zebra", "seven"], "seven") == ("seven", "zebra")
    ranked, left_out = preference_rows(answers[:2], [best_and_worst(["one", "uno"], "one"), ("dos", "dos")])
    assert [(r["chosen"], r["rejected"]) for r in ranked] == [("one", "uno")] and left_out == {"tied": 1}
    # the whole verb: sampled replies to the machine's catalog prompts, ranked by chrF against the reference
    built = run_cli("dataset", "preference", "--rejected-from", str(tmp_path / "sft" / "best"), "--samples", "2",
                    "--examples", "6", "--dtype", "fp32", "--out", str(tmp_path / "ranked"))
    assert built.returncode == 0 and "with every sample alike" in built.stdout, built.stderr
    splits = chat_tasks("zh_CN")
    checked = 0
    for split in ("train", "val", "test"):  # the tiny model's samples differ on some held-out prompts only
        reference = {r["prompt"]: r["answer"] for r in splits[split]}
        for line in (tmp_path / "ranked" / f"{split}.jsonl").read_text(encoding="utf-8").splitlines():
            pair = json.loads(line)  # sampled, not the reference: chosen is strictly nearer it than rejected
            target = reference[pair["messages"][0]["content"]]
            assert chrf(pair["chosen"], [target]).score > chrf(pair["rejected"], [target]).score, pair
            checked += 1
    assert checked > 0, built.stdout

    pairs = [{"messages": r["messages"][:1], "chosen": r["messages"][1]["content"],
              "rejected": WORDS[i - 1]} for i, r in enumerate(rows)]
    pairs = write_jsonl(tmp_path / "pairs.jsonl", pairs)
    done = run_cli("finetune", "--init", str(folder), "--task", "dpo", "--method", "lora", "--train", str(pairs),
                   "--val", str(pairs), "--epochs", "20", "--batch-size", "4", "--lr", "1e-2", "--eval-every", "10",
                   "--beta", "0.1", "--rpo-alpha", "0", "--out", str(tmp_path / "dpo"), *common)  # the paper's DPO
    assert done.returncode == 0, done.stderr
    dpo = metric_rows(tmp_path / "dpo")
    assert dpo[-1]["reward_margin"] > dpo[0]["reward_margin"] and dpo[-1]["reward_margin"] > 0, dpo
    assert dpo[-1]["preference_accuracy"] == 1.0 and dpo[-1]["val_loss"] < 0.69, dpo


def test_bad_chat_data_is_one_line_naming_file_and_row(tmp_path, smol_tokenizer):
    folder = tiny_llama(tmp_path / "tiny", smol_tokenizer)
    good = write_jsonl(tmp_path / "good.jsonl", recall_rows())
    strict = tmp_path / "strict.jinja"
    strict.write_text("{% for m in messages %}{% if m['role'] not in ['user', 'assistant'] %}"
                      "{{ raise_exception('no role ' + m['role']) }}{% endif %}{{ m['content'] }}{% endfor %}")
    cases = {
        "chat": (write_jsonl(tmp_path / "mute.jsonl", [recall_rows()[0], {"messages": [
            {"role": "user", "content": "hello?"}]}]), "mute.jsonl: line 2: no assistant turn", ()),
        "dpo": (write_jsonl(tmp_path / "same.jsonl", [{"prompt": "Which?", "chosen": "this", "rejected": "this"}]),
                "same.jsonl: line 1: chosen equals rejected", ()),
        "chat ": (write_jsonl(tmp_path / "tool.jsonl", [recall_rows()[0], {"messages": [
            {"role": "tool", "content": "42"}, {"role": "assistant", "content": "ok"}]}]),
            "tool.jsonl: line 2: the chat template of", ("--chat-template", str(strict))),
    }
    for task, (data, message, extra) in cases.items():
        done = run_cli("finetune", "--init", str(folder), "--task", task.strip(), "--train", str(data), "--val",
                       str(good if task.strip() == "chat" else data), "--out", str(tmp_path / "run"), *extra)
        assert done.returncode == 1 and message in error_line(done), done.stderr
        assert "no role tool" in error_line(done) or task != "chat ", done.stderr
