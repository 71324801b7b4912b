"""Import speed and memory: `manage.py import` of N manifest rows into PostgreSQL, each row with its own
64×64 PNG (the realistic case), or all rows over 16 images (the repeated-image case), or a COCO Captions
bundle (one caption per record, each image with five). The bundle is a zip, as the browser and the API
upload it.

For each N: write the bundle once (cached under --cache, keyed by kind and N), create an empty database on
the server (unless --reuse-database), migrate it, create a project, run `manage.py import` as a user would
into a fresh data folder and sample the proportional set size (PSS, so
pages the forked checkers share with the main process count once) of the command and all its children
every 0.1 s. Prints tasks (or captions) per second with and without Django's start-up, and the peak.

    .venv/bin/python bench/imports.py --rows 100000 1000000
    .venv/bin/python bench/imports.py --kind repeated --rows 1000000
    .venv/bin/python bench/imports.py --kind coco --rows 100000
"""

from __future__ import annotations

import argparse
import io
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
import zipfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
K = 4


def png_64(i: int) -> bytes:
    """A 64×64 PNG unique to ``i``: a gradient shifted by ``i`` with noise seeded by ``i`` on top (about 5 kB, about
    as hard to decode as a photo thumbnail; pure noise would be 12 kB and make 1M rows a 12 GB zip)."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:64, 0:64]
    base = np.stack([(x * 4 + i) % 256, (y * 4 + i // 7) % 256, ((x + y) * 2 + i // 49) % 256], axis=-1)
    noise = np.random.default_rng(i).integers(0, 6, size=(64, 64, 3))
    buf = io.BytesIO()
    Image.fromarray((base + noise).clip(0, 255).astype(np.uint8), "RGB").save(buf, format="PNG")
    return buf.getvalue()


def _pngs(span: tuple[int, int]) -> list[bytes]:
    return [png_64(i) for i in range(*span)]


BASES = 2000  # distinct pictures behind the "distinct" kind's files


def with_id(png: bytes, i: int) -> bytes:
    """``png`` with a tEXt chunk holding ``i`` before its IEND: a file of its own (its own sha256, stored and
    checked on its own, decoded in full like any other) without encoding a million pictures."""
    import zlib

    body = b"tEXt" + b"lensloop-row\0" + str(i).encode()
    chunk = (len(body) - 4).to_bytes(4, "big") + body + zlib.crc32(body).to_bytes(4, "big")
    return png[:-12] + chunk + png[-12:]


def write_bundle(path: Path, n: int, kind: str) -> None:
    """The bundle as a zip (what the browser and the API upload): manifest rows with K candidates each,
    or a COCO Captions source whose records become prompts."""
    tmp = path.with_suffix(".partial")
    distinct = 16 if kind == "repeated" else n
    per_image = 5 if kind == "coco" else 1
    images = -(-distinct // per_image) if kind == "coco" else distinct
    chunk = 2000
    with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as zf, ProcessPoolExecutor() as pool:
        if kind == "pixels":  # every picture its own (slow to write: ~0.5 ms per image)
            spans = [(s, min(s + chunk, images)) for s in range(0, images, chunk)]
            pictures = ((start + j, data) for (start, _), datas in zip(spans, pool.map(_pngs, spans), strict=True)
                        for j, data in enumerate(datas))
        else:
            bases = [d for datas in pool.map(_pngs, [(s, min(s + 500, BASES)) for s in range(0, BASES, 500)]) for d in datas]
            pictures = ((i, with_id(bases[i % BASES], i) if images > 16 else bases[i]) for i in range(images))
        for i, data in pictures:
            zf.writestr(f"val2017/{i:012d}.png" if kind == "coco" else f"images/{i:07d}.png", data)
        if kind == "coco":
            coco = {
                "images": [{"id": i, "file_name": f"{i:012d}.png", "width": 64, "height": 64} for i in range(images)],
                "annotations": [{"id": a, "image_id": a // per_image, "caption": f"caption {a % per_image} of image {a // per_image}"}
                                for a in range(n)],
            }
            zf.writestr("annotations/captions_val2017.json", json.dumps(coco))
        else:
            with zf.open("manifest.jsonl", "w", force_zip64=True) as fh:
                for i in range(n):
                    row = {"image": f"images/{i % distinct:07d}.png", "prompt": "Describe the image.",
                           "candidates": [f"caption {j} of row {i}" for j in range(K)], "priority": (i * 7919) % 1000 / 1000}
                    fh.write((json.dumps(row) + "\n").encode())
    tmp.rename(path)


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as fh:
                    todo.extend(int(c) for c in fh.read().split())
        except OSError:
            continue
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


class PeakMemory(threading.Thread):
    """Samples the PSS of a process and all its descendants; ``peak_mb`` is the largest sum seen."""

    def __init__(self, pid: int, every: float = 0.1):
        super().__init__(daemon=True)
        self.pid, self.every, self.peak_kb, self.stop = pid, every, 0, threading.Event()

    def run(self) -> None:
        while not self.stop.wait(self.every):
            self.peak_kb = max(self.peak_kb, sum(_pss_kb(p) for p in _tree(self.pid)))

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024


def measured(cmd: list[str], env: dict) -> tuple[subprocess.CompletedProcess, float, float, float]:
    """Run ``cmd`` with its output captured; returns (the finished process, wall seconds, CPU seconds of it and
    its children, peak PSS in MB of it and its children, sampled every 0.1 s)."""
    cpu0 = os.times()
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    peak = PeakMemory(proc.pid)
    peak.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    cpu1 = os.times()
    peak.stop.set()
    peak.join()
    cpu = (cpu1.children_user - cpu0.children_user) + (cpu1.children_system - cpu0.children_system)
    return subprocess.CompletedProcess(cmd, proc.returncode, out, err), wall, cpu, peak.peak_mb


def manage(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "manage.py"), *args], env=env, cwd=ROOT, check=True,
                          capture_output=True, text=True)


def bench(args, n: int) -> dict:
    cache = Path(args.cache)
    cache.mkdir(parents=True, exist_ok=True)
    bundle = cache / f"{args.kind}-{n}.zip"
    if not bundle.exists():
        t0 = time.perf_counter()
        write_bundle(bundle, n, args.kind)
        print(f"  wrote {bundle} ({bundle.stat().st_size / 1e6:,.0f} MB) in {time.perf_counter() - t0:.0f} s", flush=True)
    # A fresh data folder: every image is written, none found stored by an earlier run. (With --reuse-database
    # the database may hold an earlier run's image rows, which the import then does not insert.)
    data_dir = tempfile.mkdtemp(prefix="bench-imports-data-", dir=args.data_root or args.cache)
    args.data_dirs.append(data_dir)
    database_url = args.database_url
    if args.fresh_database:  # an empty database of its own: no image row of an earlier run to skip
        database_url = fresh_database(args.database_url, args.databases)
    env = {**os.environ, "DATABASE_URL": database_url, "LOG_LEVEL": "WARNING", "LENSLOOP_DATA_DIR": data_dir}
    manage(env, "migrate", "-v0")
    slug = f"bench-imports-{uuid.uuid4().hex[:8]}"
    manage(env, "shell", "-c", "from annotation.services.projects import project_create; "
                               f"project_create(name={slug!r}, slug={slug!r}, candidates_per_task={K}, overlap=1)")
    cmd = [sys.executable, str(ROOT / "manage.py"), "import", slug, str(bundle), "--no-progress", *args.extra]
    if args.kind == "coco":
        cmd += ["--format", "coco"]
    load = os.getloadavg()[0]
    proc, wall, cpu, peak_mb = measured(cmd, env)
    if proc.returncode:
        raise SystemExit(f"import failed ({proc.returncode}): {proc.stderr[-3000:]}")
    out = proc.stdout
    inner = float(out.strip().rsplit(" in ", 1)[1].split()[0])
    unit = "captions" if args.kind == "coco" else "tasks"
    result = {"kind": args.kind, "rows": n, "command_s": round(wall, 1), "import_s": inner,
              f"{unit}_per_s_with_startup": round(n / wall), f"{unit}_per_s": round(n / inner),
              "peak_pss_mb": round(peak_mb), "cpu_s": round(cpu, 1), "cpu_ms_per_row": round(1000 * cpu / n, 3),
              "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2), "output": out.strip()}
    print(f"  {args.kind} N={n:,}: `manage.py import` {wall:.1f} s = {n / wall:,.0f} {unit}/s; the import itself "
          f"{inner:.1f} s = {n / inner:,.0f} {unit}/s; peak memory (PSS, command and its workers) "
          f"{peak_mb:,.0f} MB; CPU (command and its workers, not PostgreSQL) {cpu:.0f} s = "
          f"{1e6 * cpu / n:,.0f} µs per row; load average {load:.1f} before", flush=True)
    result["fresh_database"] = args.fresh_database
    result["data_root"] = args.data_root or args.cache
    if args.clean and not args.fresh_database:  # minutes at 1M rows (Django deletes what depends on the project first)
        manage(env, "shell", "-c", f"from annotation.models import Project; Project.objects.filter(slug={slug!r}).delete()")
    return result


def fresh_database(url: str, made: list[str]) -> str:
    """Create an empty database on the server of ``url``; its URL (its name is added to ``made``)."""
    import psycopg

    name = f"lensloop_bench_{uuid.uuid4().hex[:8]}"
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")
    made.append(name)
    return url.rsplit("/", 1)[0] + "/" + name


def clean_up(args) -> None:
    """Drop the fresh databases and delete the data folders, after every measurement: deleting a million
    files keeps the disk busy (discards, journal) and would slow the next run's writes."""
    import psycopg

    with psycopg.connect(args.database_url, autocommit=True) as conn:
        for name in args.databases:
            conn.execute(f"DROP DATABASE IF EXISTS {name}")
    for folder in args.data_dirs:
        shutil.rmtree(folder, ignore_errors=True)


def append_json(path: Path, results: list[dict]) -> None:
    """Add ``results`` to the list in the JSON file at ``path`` (created if missing)."""
    old = json.loads(path.read_text()) if path.exists() else []
    path.write_text(json.dumps(old + results, indent=2) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, nargs="+", default=[100_000])
    parser.add_argument("--kind", choices=["distinct", "pixels", "repeated", "coco"], default="distinct",
                        help="distinct: each row its own 64×64 PNG file (2,000 pictures, each file made its own by a "
                             "text chunk with the row's number); pixels: each row its own picture (slow to write); "
                             "repeated: 16 images for all rows; coco: COCO Captions, 5 captions per image, --rows "
                             "captions")
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/root")
    parser.add_argument("--cache", default="/tmp/lensloop-bench-imports", help="where the bundles are kept between runs")
    parser.add_argument("--data-root", default="", help="where the imports' data folders are made (default: --cache); "
                        "/dev/shm (memory) shows what the disk's file creation costs")
    parser.add_argument("--clean", action="store_true", help="delete the imported project after (default: keep it)")
    parser.add_argument("--reuse-database", dest="fresh_database", action="store_false",
                        help="import into the database of --database-url as it is (default: a new, empty database "
                             "on its server for each run, dropped at the end)")
    parser.add_argument("--repeat", type=int, default=1, help="runs per size (the figures vary with the disk's state)")
    parser.add_argument("--json", help="append the results to this JSON file")
    parser.add_argument("extra", nargs="*", help="more arguments for manage.py import (after --)")
    args = parser.parse_args()
    print(f"bench/imports.py: {args.kind}, {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    args.data_dirs, args.databases = [], []
    try:
        results = [bench(args, n) for n in args.rows for _ in range(args.repeat)]
    finally:
        clean_up(args)
    if args.json:
        path = Path(args.json)
        old = json.loads(path.read_text()) if path.exists() else []
        path.write_text(json.dumps(old + results, indent=2) + "\n")


if __name__ == "__main__":
    main()
