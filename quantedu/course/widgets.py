"""The ipywidgets front end of the course's quizzes and exercise panels, with the one style they share.

:func:`quiz_widget` draws a :class:`quantedu.course.quiz.Quiz` (check and reveal buttons, first-answer score);
:mod:`quantedu.exercises.core` builds its panels with the same :data:`WIDGET_STYLE` and :func:`inline_html`.
"""
from __future__ import annotations

import html
import re


def inline_html(text: str) -> str:
    """Escaped HTML of a one-paragraph text, markdown's ```code``` spans rendered (no literal backticks)."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))


def in_kernel() -> bool:
    """True inside a Jupyter kernel (where widgets can render)."""
    try:
        from IPython import get_ipython

        shell = get_ipython()
    except ImportError:
        return False
    return shell is not None and "IPKernelApp" in getattr(shell, "config", {})


# ipywidgets draws an HTML widget at its one-line input height (a paragraph comes out double-spaced), gives a
# radio label a fixed one-line height with its button after the text (float: left moves it back; a long option
# then wraps over the next one and hides its button), and a checkbox label nowrap + ellipsis. Here text wraps at
# a normal line height, beside its button. Exercise panels (quantedu.exercises.core) use the same style.
WIDGET_STYLE = """<style>
.quantedu-widget .jupyter-widget-html-content, .quantedu-widget .widget-html-content { line-height: 1.45; }
.quantedu-widget .jupyter-widget-radio-box label, .quantedu-widget .widget-radio-box label,
.quantedu-widget .jupyter-widget-checkbox label, .quantedu-widget .widget-checkbox label {
  display: flex; align-items: flex-start; height: auto; line-height: 1.4; margin: 0.2em 0;
  white-space: normal; overflow: visible; text-overflow: clip; }
.quantedu-widget .jupyter-widget-radio-box input, .quantedu-widget .widget-radio-box input,
.quantedu-widget .jupyter-widget-checkbox input, .quantedu-widget .widget-checkbox input {
  order: -1; float: none; flex: 0 0 auto; align-self: flex-start; height: 1.4em; margin: 0 0.6em 0 1px; }
.quantedu-widget .jupyter-widget-checkbox, .quantedu-widget .widget-checkbox { width: auto; height: auto; }
</style>"""


def quiz_widget(quiz):
    import ipywidgets as w

    score = w.HTML()
    full = w.Layout(width="100%", max_width="900px")

    def update_score():
        right, total = quiz.score
        score.value = (f"<b>Score: {right}/{total}</b> <small>(first answers; {len(quiz.results)} of {total} "
                       f"answered)</small>")

    rows = [w.HTML(WIDGET_STYLE), w.HTML(f"<h3>{html.escape(quiz.title)}</h3>")]
    for i, q in enumerate(quiz.questions):
        if q.kind == "single":
            picker = w.RadioButtons(options=[(opt, k) for k, opt in enumerate(q.options)], value=None, layout=full)
            read, inputs, empty = (lambda picker=picker: picker.value), [picker], "Choose an option first."
        elif q.kind == "multi":
            boxes = [w.Checkbox(description=opt, indent=False, layout=full) for opt in q.options]
            read = lambda boxes=boxes: [k for k, b in enumerate(boxes) if b.value]  # noqa: E731
            inputs, empty = boxes, "Tick every statement you think is true first."
        else:
            field_ = w.Text(placeholder="a number")
            read, inputs, empty = (lambda field_=field_: field_.value.strip()), [field_], "Type a number first."
        out = w.HTML()
        check, reveal = w.Button(description="Check", button_style="primary"), w.Button(description="Reveal answer")

        def on_check(_b, i=i, read=read, out=out, empty=empty):
            value = read()
            if value is None or value == "" or value == []:
                out.value = f"<span style='color:#555'>{empty}</span>"
                return
            fb = quiz.answer(i, value)
            color = "green" if fb.correct else "#b00" if fb.valid else "#555"
            out.value = f"<span style='color:{color}'>{inline_html(fb.message)}</span>"
            update_score()

        def on_reveal(_b, i=i, out=out):
            out.value = f"<span style='color:#05a'>{inline_html(quiz.reveal(i).message)}</span>"
            update_score()

        check.on_click(on_check)
        reveal.on_click(on_reveal)
        rows += [w.HTML(f"<b>Q{i + 1}.</b> {inline_html(q.prompt)}" + "  <i>(select all that apply)</i>"
                        * (q.kind == "multi")), *inputs, w.HBox([check, reveal]), out]
    update_score()
    box = w.VBox(rows + [score])
    box.add_class("quantedu-quiz")
    box.add_class("quantedu-widget")
    return box
