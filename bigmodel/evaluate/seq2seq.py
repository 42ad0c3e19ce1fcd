"""Generated text against references: BLEU and chrF (`sacrebleu`, corpus-level, its default
13a tokenisation), ROUGE-L F1 (`rouge-score`, mean over examples), and character and word
error rates (`jiwer`) for transduction tasks such as pinyin and speech recognition, where every
symbol counts."""

from __future__ import annotations

from bigmodel.errors import BigModelError, require


def error_rates(references: list[str], hypotheses: list[str]) -> dict[str, float]:
    """Character and word error rates and exact matches, in percent."""
    try:
        import jiwer
    except ImportError:
        raise BigModelError("error rates need jiwer: pip install 'bigmodel[seq2seq]'") from None
    if not references:
        raise BigModelError("nothing to score: no examples")
    spoken = [hyp if hyp.strip() else "-" for hyp in hypotheses]  # jiwer refuses empty hypotheses
    return {"cer": 100 * jiwer.cer(references, spoken), "wer": 100 * jiwer.wer(references, spoken),
            "exact_match": 100 * sum(h == r for h, r in zip(hypotheses, references, strict=True)) / len(references)}


def seq2seq_scores(hypotheses: list[str], references: list[str]) -> dict[str, float]:
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError:
        raise BigModelError("seq2seq scores need sacrebleu and rouge-score: "
                            "pip install 'bigmodel[seq2seq]'") from None
    if not references:
        raise BigModelError("nothing to score: no examples")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references, strict=True)]
    return {
        "bleu": sacrebleu.corpus_bleu(hypotheses, [references]).score,
        "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
        "rouge_l": 100 * sum(rouge) / len(rouge),
        **error_rates(references, hypotheses),
    }


def reply_scores(hypotheses: list[str], references: list[str], tasks: list[str]) -> dict[str, dict[str, float]]:
    """Exact match (after trimming) and corpus chrF of generated replies, over all and per task."""
    require("sacrebleu", "seq2seq", "chat scores")
    import sacrebleu

    groups = {"all": list(range(len(references)))}
    for i, task in enumerate(tasks):
        if task:
            groups.setdefault(task, []).append(i)
    scores = {}
    for name, rows in groups.items():
        hyps, refs = [hypotheses[i] for i in rows], [references[i] for i in rows]
        scores[name] = {"exact_match": 100 * sum(h.strip() == r.strip() for h, r in zip(hyps, refs, strict=True))
                        / len(rows), "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score, "examples": len(rows)}
    return scores
