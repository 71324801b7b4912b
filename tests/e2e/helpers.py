"""Steps the browser tests share: log in through the form, open the ranking page, wait for the next
task, read the cards, build an import bundle, save a screenshot."""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

from playwright.sync_api import expect

from tests import factories as f

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"


def login(page, live_server, username: str, password: str | None = None) -> None:
    """Log in through the real login form, as a person would."""
    page.goto(f"{live_server.url}/accounts/login/")
    page.fill("#id_username", username)
    page.fill("#id_password", password or "pw-" + username)
    page.click("button[type=submit]")
    page.wait_for_url(f"{live_server.url}/")


def shot(page, name: str, *, full_page: bool = False) -> None:
    """Save a screenshot for the README, only when asked (so test runs never dirty the tree)."""
    if os.environ.get("LENSLOOP_SCREENSHOTS") == "1":
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=full_page)


def on_screen_ids(page) -> list[int]:
    """Candidate ids in the order the cards are shown (card 1 first)."""
    return [int(x) for x in page.locator("#pool .card").evaluate_all("els => els.map(e => e.dataset.id)")]


def task_id(page) -> int:
    return int(page.locator("#work").get_attribute("data-task-id"))


def open_work(page, live_server, slug: str = "shapes") -> int:
    page.goto(f"{live_server.url}/projects/{slug}/work/")
    expect(page.locator("#work")).to_have_attribute("data-state", "ready")
    return task_id(page)


def wait_for_next(page, previous: int, timeout: float | None = None) -> int:
    expect(page.locator("#work")).not_to_have_attribute("data-task-id", str(previous), timeout=timeout)
    expect(page.locator("#work")).to_have_attribute("data-state", "ready", timeout=timeout)
    return task_id(page)


def bundle_zip(path: Path, *, rows: int = 3, bad_rows: int = 1, k: int = 4) -> Path:
    """A zip with manifest.jsonl: ``rows`` good rows and ``bad_rows`` rows naming missing images."""
    with zipfile.ZipFile(path, "w") as zf:
        lines = []
        for i in range(rows):
            name = f"images/{i:03d}.png"
            zf.writestr(name, f.png_bytes(color=(10 * i, 200, 90)))
            lines.append({"image": name, "prompt": f"Describe image {i}.", "candidates": [f"c{j} of {i}" for j in range(k)]})
        for i in range(bad_rows):
            lines.append({"image": f"images/missing-{i}.png", "prompt": "Describe.", "candidates": ["a"] * k})
        zf.writestr("manifest.jsonl", "".join(json.dumps(line) + "\n" for line in lines))
    return path


COLOURS = {"red": (214, 48, 49), "green": (39, 174, 96), "blue": (41, 98, 255), "purple": (142, 68, 173)}
SHAPES = ("circle", "square", "triangle")


def shapes_scene(seed: int) -> tuple[bytes, list[str]]:
    """A small synthetic picture of coloured shapes and four captions of it, one of them right, so the
    pages (and their screenshots) look like real work."""
    import io
    import random

    from PIL import Image, ImageDraw

    rng = random.Random(seed)
    img = Image.new("RGB", (480, 360), (246, 245, 240))
    draw = ImageDraw.Draw(img)
    things = []
    for slot in range(rng.choice([2, 3])):
        colour, shape, size = rng.choice(list(COLOURS)), rng.choice(SHAPES), rng.choice(["small", "large"])
        r = 70 if size == "large" else 35
        cx, cy = 90 + slot * 150, rng.randint(110, 250)
        box = [cx - r, cy - r, cx + r, cy + r]
        if shape == "circle":
            draw.ellipse(box, fill=COLOURS[colour])
        elif shape == "square":
            draw.rectangle(box, fill=COLOURS[colour])
        else:
            draw.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=COLOURS[colour])
        things.append((size, colour, shape))

    def caption(items):
        words = [f"a {s} {c} {sh}" for s, c, sh in items]
        listed = ", ".join(words[:-1]) + " and " + words[-1] if len(words) > 1 else words[0]
        count = ["one shape", "two shapes", "three shapes"][len(items) - 1]
        return f"{count}: {listed}."

    def wrong(items):
        items = list(items)
        i = rng.randrange(len(items))
        size, colour, shape = items[i]
        items[i] = rng.choice([
            (size, rng.choice([c for c in COLOURS if c != colour]), shape),
            (size, colour, rng.choice([s for s in SHAPES if s != shape])),
            ("small" if size == "large" else "large", colour, shape),
        ])
        return items

    captions = [caption(things), caption(wrong(things)), caption(wrong(wrong(things))), caption(things[:-1] or things)]
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue(), captions


def shapes_tasks(project, n: int) -> None:
    """``n`` ranking tasks over synthetic shape pictures (K=4)."""
    from annotation.images import check_image, store_image
    from annotation.models import Candidate, Image, Prompt, RankingTask

    for seed in range(n):
        data, captions = shapes_scene(seed)
        checked = check_image(data)
        store_image(checked)
        image, _ = Image.objects.get_or_create(
            sha256=checked.sha256,
            defaults=dict(file=checked.relpath, format=checked.format, width=checked.width, height=checked.height,
                          size_bytes=checked.size_bytes),
        )
        prompt = Prompt.objects.create(project=project, image=image, text="Describe the image.")
        sources = ["policy-v1", "policy-v2", "policy-v2", "reference"]
        cands = Candidate.objects.bulk_create(Candidate(prompt=prompt, text=t, source=s) for t, s in zip(captions, sources, strict=True))
        RankingTask.objects.create(project=project, prompt=prompt, candidate_ids=[c.pk for c in cands],
                                   required_annotations=project.overlap)
