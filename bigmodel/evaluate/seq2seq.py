"""Generated text against references: BLEU and chrF (`sacrebleu`, corpus-level; BLEU tokenised by
its `zh` rule for Chinese references, else its default 13a), the format placeholders kept,
ROUGE-L F1 (`rouge-score`, mean over examples), character and word error rates (`jiwer`) for
transduction tasks such as pinyin and speech recognition, where every symbol counts, and a
translation-memory baseline."""

from __future__ import annotations

from bigmodel.data.judge import exact
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


def seq2seq_scores(hypotheses: list[str], references: list[str], sources: list[str] | None = None,
                   tokenize: str = "") -> dict[str, float]:
    """Corpus BLEU (with `tokenize`, else sacrebleu's `zh` for Chinese references and `13a` otherwise), chrF,
    mean ROUGE-L, error rates; with `sources`, the share of those holding format placeholders (`%s`,
    `{name}`) whose output keeps exactly the same ones."""
    try:
        import sacrebleu
        from rouge_score import rouge_scorer
    except ImportError:
        raise BigModelError("seq2seq scores need sacrebleu and rouge-score: "
                            "pip install 'bigmodel[seq2seq]'") from None
    if not references:
        raise BigModelError("nothing to score: no examples")
    tokenize = tokenize or ("zh" if mostly_chinese(references) else "13a")
    scorer = rouge_scorer.RougeScorer(["rougeL"])
    rouge = [scorer.score(ref, hyp)["rougeL"].fmeasure for hyp, ref in zip(hypotheses, references, strict=True)]
    try:
        bleu = sacrebleu.corpus_bleu(hypotheses, [references], tokenize=tokenize).score
    except (KeyError, ValueError, AssertionError):
        raise BigModelError(f"--bleu-tokenize {tokenize!r}: not one of sacrebleu's tokenizers "
                            "(13a, zh, intl, char, none, ja-mecab, ko-mecab, flores200)") from None
    figures = {"bleu": bleu, "bleu_tokenize": tokenize, "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
               "rouge_l": 100 * sum(rouge) / len(rouge), **error_rates(references, hypotheses)}
    if sources is not None:
        from bigmodel.data.catalogs import placeholders

        formatted = [(placeholders(s), h) for s, h in zip(sources, hypotheses, strict=True) if placeholders(s)]
        if formatted:
            figures["placeholders_kept"] = 100 * sum(p == placeholders(h) for p, h in formatted) / len(formatted)
            figures["with_placeholders"] = len(formatted)
    return figures


def mostly_chinese(texts: list[str]) -> bool:
    """Whether most non-space characters are CJK ideographs (BLEU then needs the zh tokenizer)."""
    chars = [c for t in texts for c in t if not c.isspace()]
    return bool(chars) and sum("\u4e00" <= c <= "\u9fff" or "\u3400" <= c <= "\u4dbf" for c in chars) > len(chars) / 3


def memory_translations(pairs: list[tuple[str, str]], sources: list[str], shortlist: int = 20) -> list[str]:
    """A translation memory, the baseline a translator's tool offers: each source gets the target of the
    memory's source nearest by chrF. The `shortlist` nearest by character n-gram TF-IDF cosine are
    re-ranked by sentence chrF (scoring every pair by chrF would take hours)."""
    import numpy as np
    import sacrebleu
    from sklearn.feature_extraction.text import TfidfVectorizer

    if not pairs:
        raise BigModelError("--memory: no source/target pairs to look up")
    known = [s for s, _ in pairs]
    vectors = TfidfVectorizer(analyzer="char_wb", ngram_range=(1, 4), sublinear_tf=True).fit(known)
    memory, queries = vectors.transform(known), vectors.transform(sources)
    found = []
    for start in range(0, len(sources), 256):
        similar = (queries[start:start + 256] @ memory.T).toarray()
        for row, source in zip(similar, sources[start:start + 256], strict=True):
            near = np.argpartition(-row, min(shortlist, len(row) - 1))[:shortlist]
            best = max(near, key=lambda j: (sacrebleu.sentence_chrf(known[j], [source]).score, row[j]))
            found.append(pairs[best][1])
    return found


def best_and_worst(candidates: list[str], reference: str) -> tuple[str, str]:
    """The candidate closest to the reference by sentence chrF and the farthest: a verifier's preference
    between a model's own answers (the same answer twice when all score alike)."""
    require("sacrebleu", "seq2seq", "ranking replies")
    import sacrebleu

    scored = sorted((sacrebleu.sentence_chrf(c, [reference]).score, c) for c in candidates)
    (low, worst), (high, best) = scored[0], scored[-1]
    return (best, worst) if high > low else (best, best)


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
        scores[name] = {"exact_match": 100 * sum(exact(h, r) for h, r in zip(hyps, refs, strict=True))
                        / len(rows), "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score, "examples": len(rows)}
    return scores


def compare_replies(hypotheses: list[str], baseline: list[str], references: list[str]) -> dict[str, float]:
    """These replies against a baseline's to the same references, and how often chance alone would give such
    a difference: chrF by paired bootstrap resampling (sacrebleu, 1,000 resamples of the conversations),
    exact match by McNemar's exact test (a binomial test on the conversations only one of the two gets right)."""
    require("sacrebleu", "seq2seq", "chat scores")
    from sacrebleu.metrics import CHRF
    from sacrebleu.significance import PairedTest
    from scipy.stats import binomtest

    _, scores = PairedTest([("baseline", baseline), ("model", hypotheses)], {"chrF": CHRF()}, [references],
                           test_type="bs")()
    before, after = next(results for name, results in scores.items() if name != "System")
    right = [(exact(h, r), exact(b, r)) for h, b, r in zip(hypotheses, baseline, references, strict=True)]
    gained, lost = sum(h and not b for h, b in right), sum(b and not h for h, b in right)
    return {"chrf_change": after.score - before.score, "chrf_p": float(after.p_value),
            "exact_change": 100 * (gained - lost) / len(references), "exact_gained": gained, "exact_lost": lost,
            "exact_p": float(binomtest(gained, gained + lost).pvalue) if gained + lost else 1.0}
