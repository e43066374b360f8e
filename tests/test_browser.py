"""The quiz and exercise widgets in a real browser (issue 22).

The test starts JupyterLab itself (a free port, a temporary folder holding a small generated notebook that
uses the real ``Quiz`` and exercise ``check`` widgets) and drives Debian's chromium with Playwright: a
quiz answered wrong then right (feedback, first-answer score, long options wrapping beside their radio
buttons), an exercise filled wrong (FAILED, a hint button that reveals one hint), run again (the hints
already read are still there), then edited to the right code (PASSED, code rendered, no backticks).

Needs ``/usr/bin/chromium`` (``apt-get install -y chromium``; ``.ci/run`` installs it when root) and the
``playwright`` package (the ``test`` extra; it cannot download browsers here). Without them the test
skips, and fails under CI (``$CI`` set).
"""
import json
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from quantedu.course.quiz import Quiz

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = os.environ.get("QUANTEDU_CHROMIUM", "/usr/bin/chromium")
EXERCISE = "01.kv_cache"
QUESTION = ("warmup", "perplexity-meaning")


def require_browser():
    missing = []
    if not os.access(CHROMIUM, os.X_OK):
        missing.append(f"chromium at {CHROMIUM} (as root: apt-get install -y chromium)")
    for module, how in (("playwright", "pip install playwright (the test extra)"),
                        ("jupyterlab", "the course extra"), ("psutil", "a course dependency")):
        try:
            __import__(module)
        except ImportError:
            missing.append(f"{module} ({how})")
    if missing:
        why = "the browser test needs " + "; ".join(missing)
        if os.environ.get("CI"):
            pytest.fail(why)
        pytest.skip(why)


def exercise_cells():
    """The exercise cell as a learner fills it: wrong (all query heads cached, GQA ignored), then right."""
    from quantedu.exercises import REGISTRY

    ex = REGISTRY[EXERCISE]
    right = ex.cell(solution=True)
    wrong = right.replace("shape.kv_heads", "shape.heads")
    assert wrong != right, "the exercise's solution changed: pick another wrong line"
    return ex, wrong, right


def write_notebook(folder: Path, wrong: str) -> str:
    import nbformat

    topic, qid = QUESTION
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell(f'from quantedu.course.quiz import Quiz\n\nquiz = Quiz.load("{topic}", ids=["{qid}"])\n'
                                  "quiz.show()"),
        nbformat.v4.new_code_cell(wrong)])
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, folder / "widgets.ipynb")
    return "widgets.ipynb"


def lab_settings(folder: Path) -> Path:
    """Every cell in the DOM (no windowing), no news prompt."""
    settings = folder / "settings" / "@jupyterlab"
    for ext, name, value in (("notebook-extension", "tracker", {"windowingMode": "none"}),
                             ("apputils-extension", "notification", {"fetchNews": "false", "checkForUpdates": False})):
        (settings / ext).mkdir(parents=True, exist_ok=True)
        (settings / ext / f"{name}.jupyterlab-settings").write_text(json.dumps(value))
    return folder / "settings"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path):
    """(base URL, token, notebook name) of a JupyterLab serving ``tmp_path``; stopped (with its kernels) after."""
    require_browser()
    import psutil

    ex, wrong, right = exercise_cells()
    name = write_notebook(tmp_path, wrong)
    port, token = free_port(), secrets.token_hex(16)
    env = {k: v for k, v in os.environ.items() if k not in ("QUANTEDU_QUIZ_TEXT", "QUANTEDU_EXERCISE_SOLUTIONS")}
    env.update(PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")])),  # this checkout's package
               PATH=os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")]),
               JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTERLAB_SETTINGS_DIR=str(lab_settings(tmp_path)),
               JUPYTERLAB_WORKSPACES_DIR=str(tmp_path / "workspaces"))
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={tmp_path}"]
    if os.geteuid() == 0:  # JupyterLab refuses root without it (containers, CI machines)
        cmd.append("--allow-root")
    log = tmp_path / "lab.log"
    server = subprocess.Popen(cmd, env=env, stdout=log.open("w"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while True:
            try:
                urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2)
                break
            except OSError:
                if server.poll() is not None or time.time() > deadline:
                    pytest.fail(f"JupyterLab did not start; its log:\n{log.read_text()[-3000:]}")
                time.sleep(0.3)
        yield url, token, name, (ex, right)
    finally:
        started = psutil.Process(server.pid).children(recursive=True) if server.poll() is None else []
        server.send_signal(signal.SIGTERM)  # the server shuts its kernels down
        try:
            server.wait(15)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
        for child in started:  # a kernel the server did not stop in time: only what this test started
            if child.is_running():
                child.kill()


def run_cell(page, cell):
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")


def prompt_reads(cell, n: int):
    from playwright.sync_api import expect

    expect(cell.locator(".jp-InputPrompt").first).to_contain_text(f"[{n}]")


def test_quiz_and_exercise_widgets_in_chromium(lab, tmp_path):
    from playwright.sync_api import expect, sync_playwright

    url, token, name, (ex, right_code) = lab
    q = Quiz.load(QUESTION[0], ids=[QUESTION[1]]).questions[0]
    wrong = next(i for i in range(len(q.options)) if i != q.answer)
    started = time.perf_counter()
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox", "--disable-gpu",
                                                                      "--disable-dev-shm-usage"])
        try:
            # Narrow on purpose: the options wrap, which used to draw one over the next and hide its button.
            page = browser.new_page(viewport={"width": 760, "height": 1400})
            page.set_default_timeout(60_000)
            expect.set_options(timeout=60_000)
            page.goto(f"{url}/lab/tree/{name}?token={token}")
            cells = page.locator(".jp-Notebook .jp-Cell")
            expect(cells).to_have_count(2)
            # A cell run before the kernel is connected is dropped: wait for the status bar's "Idle".
            expect(page.get_by_role("button", name=re.compile(r"\| Idle"))).to_be_visible()

            # -- the quiz: unanswered, wrong (why not, no key), right (explanation), first answer scored
            run_cell(page, cells.nth(0))
            quiz = cells.nth(0).locator(".quantedu-quiz")
            expect(quiz).to_contain_text("Score: 0/1")
            expect(quiz).not_to_contain_text(q.explanation[:40])
            radios = quiz.locator("input[type=radio]")
            expect(radios).to_have_count(len(q.options))
            labels = quiz.locator("label:has(input[type=radio])")
            boxes = [labels.nth(i).bounding_box() for i in range(len(q.options))]
            for upper, lower in zip(boxes, boxes[1:]):
                assert lower["y"] >= upper["y"] + upper["height"] - 1, f"options overlap: {boxes}"
            assert max(b["height"] for b in boxes) > 1.5 * min(radios.nth(i).bounding_box()["height"]
                                                               for i in range(len(q.options))), "no option wrapped"
            for i, box in enumerate(boxes):
                r = radios.nth(i).bounding_box()
                assert r["width"] > 5 and box["y"] - 1 <= r["y"] <= box["y"] + box["height"], f"radio {i} hidden"
                assert r["x"] <= box["x"] + 4, f"radio {i} is not in front of its option"
            check = quiz.get_by_role("button", name="Check")
            check.click()
            expect(quiz).to_contain_text("Choose an option first.")
            radios.nth(wrong).check()
            check.click()
            expect(quiz).to_contain_text("Not quite.")
            expect(quiz).to_contain_text(q.why_not[wrong][:40])
            expect(quiz).not_to_contain_text(q.explanation[:40])
            radios.nth(q.answer).check()
            check.click()
            expect(quiz).to_contain_text("Correct!")
            expect(quiz).to_contain_text(q.explanation[:40])
            expect(quiz).to_contain_text("Score: 0/1")  # the first answer was wrong: it stays the score
            expect(quiz).to_contain_text("1 of 1 answered")

            # -- the exercise: FAILED, one hint per click, hints kept on a re-run, then PASSED
            cell = cells.nth(1)
            n = len(ex.hints)
            run_cell(page, cell)
            expect(cell).to_contain_text(f"Exercise {ex.id}: failed")
            cell.get_by_role("button", name=f"Show hint 1 of {n}").click()
            expect(cell).to_contain_text(f"Hint 1. {ex.hints[0][:30]}")
            expect(cell).not_to_contain_text("Hint 2.")
            expect(cell.get_by_role("button", name=f"Show hint 2 of {n}")).to_be_visible()

            run_cell(page, cell)  # the same wrong code again: a new panel, drawn after the one above is cleared
            prompt_reads(cell, 3)
            expect(cell).to_contain_text(f"Exercise {ex.id}: failed")
            expect(cell).to_contain_text(f"Hint 1. {ex.hints[0][:30]}")
            expect(cell.get_by_role("button", name=f"Show hint 2 of {n}")).to_be_visible()

            cell.locator(".jp-InputArea-editor .cm-content").click()
            page.keyboard.press("Control+A")
            page.keyboard.insert_text(right_code)
            page.keyboard.press("Shift+Enter")
            prompt_reads(cell, 4)
            expect(cell).to_contain_text(f"Exercise {ex.id}: passed")
            output = cell.locator(".jp-OutputArea")
            expect(output.locator("code").first).to_contain_text("quantedu.memory")
            assert "`" not in output.inner_text()
        except Exception:
            page.screenshot(path=str(tmp_path / "failure.png"), full_page=True)
            print(f"screenshot: {tmp_path / 'failure.png'}; JupyterLab log: {tmp_path / 'lab.log'}")
            raise
        finally:
            browser.close()
    assert time.perf_counter() - started < 120, "the browser test should take well under a minute"
