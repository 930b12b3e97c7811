"""Write the tiny chart-QA example: data/charts/*.png (bar charts drawn here) and
data/chartqa_demo.jsonl (one question per chart, image paths relative to this folder).

    python data/make_chartqa_demo.py

A format example for `configs/gemma3_4b_chartqa.yaml`, not a dataset to learn from: a real
chart-QA fine-tune wants thousands of records in the same form.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).resolve().parent
CHARTS = [
    ("sales.png", ["Jan", "Feb", "Mar", "Apr"], [12, 18, 42, 30], "Which month has the highest sales?", "March, at 42."),
    ("visits.png", ["Mon", "Tue", "Wed"], [7, 3, 5], "How many visits were there on Tuesday?", "3 visits."),
    ("costs.png", ["Rent", "Food", "Travel"], [900, 400, 250], "What is the total of all costs?", "1550 (900 + 400 + 250)."),
]


def draw(path: Path, labels: list[str], values: list[int]) -> None:
    from PIL import Image, ImageDraw

    w, h, pad = 320, 200, 24
    img = Image.new("RGB", (w, h), "white")
    d = ImageDraw.Draw(img)
    d.line([(pad, pad), (pad, h - pad), (w - pad, h - pad)], fill="black")
    step = (w - 2 * pad) // len(values)
    top = max(values)
    for i, (label, v) in enumerate(zip(labels, values, strict=True)):
        x0 = pad + i * step + step // 4
        y0 = h - pad - int((h - 3 * pad) * v / top)
        d.rectangle([x0, y0, x0 + step // 2, h - pad - 1], fill=(60, 110, 200))
        d.text((x0, y0 - 12), str(v), fill="black")
        d.text((x0, h - pad + 4), label, fill="black")
    img.save(path, optimize=True)


def main() -> None:
    rows = []
    for name, labels, values, question, answer in CHARTS:
        draw(HERE / "charts" / name, labels, values)
        rows.append({"messages": [
            {"role": "user", "content": [{"type": "image", "path": f"charts/{name}"}, {"type": "text", "text": question}]},
            {"role": "assistant", "content": answer},
        ]})
    (HERE / "chartqa_demo.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


if __name__ == "__main__":
    main()
