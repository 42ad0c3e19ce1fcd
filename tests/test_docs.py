"""The documentation stays true: the site builds with MkDocs' strict checks (links, navigation, and every
`bigmodel VERB --flag` on a page checked against the CLI), the README is a front page that still holds
CI's command, and every shell command of the tutorials runs, in order, on CI-sized settings."""

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import SHARED, free_port, metric_rows

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from docgen.hooks import unknown_flags  # noqa: E402 (the docs' own checker, not part of the package)

TUTORIALS = ["quickstart", "own-corpus", "finetune-sst2", "chat-smollm2", "serve-openai"]  # the site's order
PORT = str(free_port())
SMALL = {  # each page's settings -> the same commands at CI's size; every left side must still be on its page
    "quickstart": [("bigmodel quickstart\n", "bigmodel quickstart --minutes 0.1 --files 40\n")],
    "own-corpus": [("--max-iters 1000", "--max-iters 30"), ("--max-new-tokens 300", "--max-new-tokens 30")],
    "finetune-sst2": [("--max-train 4000", "--max-train 160 --epochs 1")],
    "chat-smollm2": [("--max-new-tokens 40", "--max-new-tokens 10")],  # its fine-tuning runs whole: see below
    "serve-openai": [("8000", PORT)],
}
BLOCK = re.compile(r"^```(bash|python)\n(.*?)^```", re.MULTILINE | re.DOTALL)


def readme_blocks() -> list[str]:
    return [body.strip() for _, body in BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))]


def test_the_site_builds_with_strict_checks(tmp_path):
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "-d", str(tmp_path / "site")],
                          cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "NO_MKDOCS_2_WARNING": "1"})
    assert done.returncode == 0, done.stderr[-4000:]
    cli = (tmp_path / "site" / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
    assert "--lora-targets" in cli and "--max-new-tokens-limit" in cli  # generated from the verb table


def test_the_checker_finds_a_flag_no_verb_has():
    assert unknown_flags("```bash\nbigmodel finetune --init x \\\n  --learning-rate 3\n```") == [
        "`bigmodel finetune` has no flag --learning-rate"]


def test_the_readme_is_a_front_page_with_ci_s_command():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 150
    install, tests = readme_blocks()[:2]
    assert install.endswith("bigmodel quickstart") and "pytest" in tests
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith(tests)  # .ci/run runs the README's command
    assert unknown_flags(text) == []
    for target in re.findall(r"\]\(([^)#:]+)(?:#[^)]*)?\)", text):  # relative links point at files that exist
        assert (ROOT / target).exists(), target


def script_of(page: str) -> str:
    """The page's bash and python blocks as one bash script, at CI's size. Installs are dropped: they are the
    README's, which CI has just run."""
    text = (ROOT / "docs" / "tutorials" / f"{page}.md").read_text(encoding="utf-8")
    parts = []
    for kind, body in BLOCK.findall(text):
        if kind == "python":
            parts.append(f"python - <<'PYTHON'\n{body}PYTHON\n")
        else:
            body = re.sub(r"^(pip install [^&\n]*(&& )?)+", "", body, flags=re.MULTILINE)
            parts.append(body)
    # a failing page stops the server it started, so the test fails at once instead of waiting on its output
    stop = "trap 'status=$?; kill $(jobs -p) 2>/dev/null || true; exit $status' EXIT\n"
    script = "set -euo pipefail\n" + stop + "".join(parts)
    for page_setting, small in SMALL[page]:
        assert page_setting in script, f"docs/tutorials/{page}.md no longer has {page_setting!r}: update SMALL"
        script = script.replace(page_setting, small)
    return script


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """One folder for the tutorials in order, as a reader goes through them: `../shared/data` and `configs/`
    resolve as they do beside a checkout."""
    top = tmp_path_factory.mktemp("tutorials")
    (top / "shared").symlink_to(SHARED.parent)
    (top / "work").mkdir()
    (top / "work" / "configs").symlink_to(ROOT / "configs")
    return top / "work"


@pytest.mark.parametrize("page", TUTORIALS)
def test_the_tutorial_runs(page, workdir):
    proc = subprocess.Popen(["bash", "-c", script_of(page)], cwd=workdir, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        output, _ = proc.communicate(timeout=1200)
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # and a server the page left running
    assert proc.returncode == 0, output[-5000:]
    expected = {"quickstart": "runs/quickstart/run/best/model.safetensors", "own-corpus": "runs/shakespeare_char/best",
                "finetune-sst2": "runs/sst2/card.md", "chat-smollm2": "runs/rule-dpo/test/metrics.json"}
    assert page not in expected or (workdir / expected[page]).exists(), output[-3000:]
    if page == "quickstart":  # it turned its time budget into steps with the step time it really trains at
        real, planned = map(int, re.search(r"(\d+) ms per step against (\d+) planned", output).groups())
        assert 0.5 < real / planned < 1.5, output[-3000:]
    if page == "chat-smollm2":
        chat_defaults_learn(workdir / "runs")


def chat_defaults_learn(runs: Path) -> None:
    """The chat tutorial is also the acceptance run of SmolLM2's chat and DPO defaults (tests/test_defaults.py
    has the other pairs): LoRA SFT with every default learns the rule, and DPO with LoRA after it prefers the
    rule's answers on held-out pairs without losing more than 2 of the 39 test prompts."""
    exact = {name: json.loads((runs / name / "metrics.json").read_text())["exact_match"]
             for name in ("rule-before", "rule-sft/test", "rule-dpo/test")}
    # measured 0% -> 56% (22 of 39); bench/defaults.py's best learning rate reaches the same 56%
    assert exact["rule-before"] == 0 and exact["rule-sft/test"] >= 40, exact
    sft = metric_rows(runs / "rule-sft")
    assert sft[0]["step"] == 0 and min(r["val_loss"] for r in sft[1:]) < 0.5 * sft[0]["val_loss"]
    dpo = metric_rows(runs / "rule-dpo")
    assert max(r["preference_accuracy"] for r in dpo[1:]) >= dpo[0]["preference_accuracy"] + 0.5, dpo
    assert exact["rule-dpo/test"] >= exact["rule-sft/test"] - 2 * 100 / 39 - 1e-9, exact  # measured: 56.4 -> 56.4
