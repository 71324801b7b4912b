"""Export speed and memory: `manage.py export --format parquet` (and the other pair formats) of a project
holding N preference pairs in PostgreSQL, each prompt with its own 64×64 PNG, inline in the Parquet rows.

The project is built once per N and kept (slug ``bench-exports-<N>``, its data folder under --cache): the
rows go in through `manage.py import` of a bundle from bench/imports.py (one image file per row, K = 4
candidates), then one ranking per task orders its four candidates, and each ranking's six pairs are
written — in SQL, as the ranking endpoint would store them, because submitting 170,000 rankings through the
API would take longer than the export being measured. The export then runs as a user runs it, and the
proportional set size (PSS) of the command and its children is sampled every 0.1 s.

    .venv/bin/python bench/exports.py --pairs 1000000
    .venv/bin/python bench/exports.py --pairs 100000 --formats parquet hf records
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "bench"))

from imports import K, append_json, manage, measured, write_bundle  # noqa: E402  (bench/imports.py)

PAIRS_PER_RANKING = K * (K - 1) // 2  # a full ordering of K candidates


def build(args, pairs: int, env: dict) -> str:
    """The project with ``pairs`` pairs (rounded up to whole rankings), its images in a data folder that
    ``env`` names from then on; returns its slug."""
    rows = -(-pairs // PAIRS_PER_RANKING)
    slug = f"bench-exports-{pairs}"
    data_dir = Path(args.cache) / f"data-{pairs}"
    env["LENSLOOP_DATA_DIR"] = str(data_dir)
    manage(env, "migrate", "-v0")
    script = (
        "from annotation.models import PreferencePair as P, Project; "
        f"p = Project.objects.filter(slug={slug!r}).first(); "
        "print(P.objects.filter(project=p).count() if p else -1)"
    )
    have = int(manage(env, "shell", "-v0", "-c", script).stdout.split()[-1])
    if have >= pairs and data_dir.exists():
        print(f"  {slug}: kept from an earlier run ({have:,} pairs)", flush=True)
        return slug
    if have >= 0:
        manage(env, "shell", "-c", f"from annotation.models import Project; Project.objects.filter(slug={slug!r}).delete()")
    bundle = Path(args.cache) / f"distinct-{rows}.zip"
    if not bundle.exists():
        write_bundle(bundle, rows, "distinct")
    manage(env, "shell", "-c", "from annotation.services.projects import project_create; "
                               f"project_create(name={slug!r}, slug={slug!r}, candidates_per_task={K}, overlap=1)")
    t0 = time.perf_counter()
    manage(env, "import", slug, str(bundle), "--no-progress")
    print(f"  imported {rows:,} rows, each its own image, in {time.perf_counter() - t0:.0f} s", flush=True)
    t0 = time.perf_counter()
    manage(env, "shell", "-c", RANKINGS_SQL.replace("@SLUG@", slug))
    print(f"  ranked every task and wrote its {PAIRS_PER_RANKING} pairs in {time.perf_counter() - t0:.0f} s", flush=True)
    return slug


# One annotator orders each task's candidates as they are listed (best first), at times a second apart; the
# pairs are every (better, worse) of the ordering with the distance between their groups as the margin.
RANKINGS_SQL = """
from django.contrib.auth import get_user_model
from django.db import connection, transaction
from annotation.models import Membership, PreferencePair, Project, Ranking, RankingTask
p = Project.objects.get(slug="@SLUG@")
user, _ = get_user_model().objects.get_or_create(username="bench-annotator")
Membership.objects.get_or_create(project=p, user=user, defaults={"role": Membership.Role.ANNOTATOR})
with transaction.atomic(), connection.cursor() as c:
    c.execute(f'''
        INSERT INTO {Ranking._meta.db_table} (task_id, project_id, annotator_id, ordering, flag_all_bad, flag_unsafe,
            flag_image_unclear, rationale, client_uuid, created_at)
        SELECT t.id, t.project_id, %s, (SELECT jsonb_agg(jsonb_build_array(c)) FROM jsonb_array_elements(t.candidate_ids::jsonb) c),
            false, false, false, '', gen_random_uuid(), now() - (t.id || ' seconds')::interval
        FROM {RankingTask._meta.db_table} t WHERE t.project_id = %s''', [user.pk, p.pk])
    c.execute(f'''
        INSERT INTO {PreferencePair._meta.db_table} (ranking_id, project_id, prompt_id, chosen_id, rejected_id, margin, created_at)
        SELECT r.id, r.project_id, t.prompt_id, a.c::bigint, b.c::bigint, b.n - a.n, r.created_at
        FROM {Ranking._meta.db_table} r JOIN {RankingTask._meta.db_table} t ON t.id = r.task_id
        CROSS JOIN LATERAL jsonb_array_elements_text(t.candidate_ids::jsonb) WITH ORDINALITY a(c, n)
        CROSS JOIN LATERAL jsonb_array_elements_text(t.candidate_ids::jsonb) WITH ORDINALITY b(c, n)
        WHERE r.project_id = %s AND a.n < b.n''', [p.pk])
"""


def export(args, slug: str, fmt: str, env: dict) -> dict:
    out = Path(args.cache) / f"export-{slug}-{fmt}"
    shutil.rmtree(out, ignore_errors=True)
    load = os.getloadavg()[0]
    proc, wall, cpu, peak_mb = measured(
        [sys.executable, str(ROOT / "manage.py"), "export", slug, str(out), "--format", fmt], env)
    if proc.returncode:
        raise SystemExit(f"export failed ({proc.returncode}): {proc.stderr[-3000:]}")
    files = [f for f in out.rglob("*") if f.is_file()]
    size = sum(f.stat().st_size for f in files)
    rows = _rows(out, fmt)
    result = {"format": fmt, "pairs": rows, "command_s": round(wall, 1), "pairs_per_s": round(rows / wall),
              "peak_pss_mb": round(peak_mb), "cpu_s": round(cpu, 1), "bytes": size, "files": len(files),
              "load_before": round(load, 2), "load_after": round(os.getloadavg()[0], 2)}
    print(f"  {fmt}: {rows:,} pairs in {wall:.1f} s = {rows / wall:,.0f} pairs/s (Django's start-up included); "
          f"peak memory (PSS) {peak_mb:,.0f} MB; {size / 1e9:.2f} GB in {len(files)} files; "
          f"CPU {cpu:.0f} s; load {load:.1f} before", flush=True)
    if not args.keep:
        shutil.rmtree(out)
    return result


def _rows(out: Path, fmt: str) -> int:
    """The rows the export holds, counted from its files (Parquet metadata, Arrow streams, JSONL lines)."""
    if fmt == "parquet":
        import pyarrow.parquet as pq

        return sum(pq.ParquetFile(f).metadata.num_rows for f in sorted((out / "data").glob("*.parquet")))
    if fmt == "hf":
        return sum(_arrow_rows(state.parent) for state in out.glob("*/state.json"))
    with open(next(out.glob("*.jsonl")), "rb") as fh:
        return sum(1 for _ in fh)


def _arrow_rows(split: Path) -> int:
    import pyarrow as pa

    return sum(pa.ipc.open_stream(pa.memory_map(str(f))).read_all().num_rows for f in sorted(split.glob("*.arrow")))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", type=int, nargs="+", default=[100_000])
    parser.add_argument("--formats", nargs="+", default=["parquet"], choices=["parquet", "hf", "records", "trl"])
    parser.add_argument("--database-url", default="postgres://postgres@127.0.0.1:5432/root")
    parser.add_argument("--cache", default="/tmp/lensloop-bench-exports", help="bundles, data folders and exports")
    parser.add_argument("--keep", action="store_true", help="keep the exported folders (default: delete each after)")
    parser.add_argument("--json", help="append the results to this JSON file")
    args = parser.parse_args()
    Path(args.cache).mkdir(parents=True, exist_ok=True)
    print(f"bench/exports.py: {os.cpu_count()} cores, load {os.getloadavg()[0]:.2f}", flush=True)
    results = []
    for pairs in args.pairs:
        env = {**os.environ, "DATABASE_URL": args.database_url, "LOG_LEVEL": "WARNING"}
        slug = build(args, pairs, env)
        results += [{"project_pairs": pairs, **export(args, slug, fmt, env)} for fmt in args.formats]
    if args.json:
        append_json(Path(args.json), results)


if __name__ == "__main__":
    main()
