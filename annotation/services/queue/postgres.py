"""The queue on PostgreSQL: a lease in one statement, a submit in two.

``PostgresQueue`` makes the same decisions as ``orm.OrmQueue`` (the contract tests hold both to the same
behaviour); it exists because at hundreds of annotations per second the ORM's per-query Python cost, not
the database, is the limit. Skip, release, close and the expiry itself are ``base.Queue``'s ORM code;
only the lease, the submit and the scan for lapsed leases are SQL here. The rules they keep:

* Locks are taken task first. Every write to an assignment happens while its task's row is locked, so
  locking the task alone serialises everything that touches one task's counters and leases.
* ``state`` is derived from the counters exactly as ``base.settle`` does it.
* The unique constraints (task, annotator) and ``client_uuid`` stay the last line of defence.

The statements run as prepared statements (``rawsql.execute``): planning the lease statement took longer than
running it. A connection pooler in front of PostgreSQL must keep sessions (pgbouncer: session mode).

The returned model instances are built with ``Model.from_db`` from the columns the statement read, so
every other field is deferred: reading one loads it, and ``save()`` writes only the loaded fields.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta

from django.db import connection

from annotation.exceptions import NotFound
from annotation.models import Assignment, Candidate, Image, Project, Prompt, Ranking, RankingTask
from annotation.pairs import normalise_ordering, pairs_from_groups
from annotation.rawsql import execute, field_order
from annotation.services.queue.base import (
    Queue,
    SubmitResult,
    check_may_submit,
    count_submit,
    repeat_of,
    stale_leases_orm,
)

# 1 the annotator's own live lease, if any; 2 otherwise (unless they are paused) the best open task they have
# not judged, locked with SKIP LOCKED so that concurrent annotators each get a different one; 3 its counters and state;
# 4 the lease (a new row, or their old expired/released row made active again); 5 everything the
# annotator's screen needs, candidates included, in the same round trip.
NEXT_TASK_SQL = """
WITH own AS (
    SELECT a.id, a.task_id, a.expires_at
    FROM annotation_assignment a
    WHERE a.annotator_id = %(user)s AND a.project_id = %(project)s AND a.state = 'active'
      AND a.expires_at > %(now)s
    ORDER BY a.leased_at
    LIMIT 1
), pick AS (
    SELECT t.id
    FROM annotation_rankingtask t
    WHERE NOT EXISTS (SELECT 1 FROM own)
      AND t.project_id = %(project)s AND t.state = 'open'
      AND t.leased_count + t.completed_count < t.required_annotations
      AND NOT EXISTS (
          SELECT 1 FROM annotation_membership m
          WHERE m.project_id = %(project)s AND m.user_id = %(user)s AND m.paused_at IS NOT NULL
      )
      AND NOT EXISTS (
          -- OFFSET 0 keeps this a per-task probe of the (task, annotator) unique index; as an anti-join
          -- the planner would read all of the annotator's past assignments on every call.
          SELECT 1 FROM annotation_assignment j
          WHERE j.task_id = t.id AND j.annotator_id = %(user)s AND j.state IN ('submitted', 'skipped', 'active')
          OFFSET 0
      )
    ORDER BY t.priority DESC, t.id
    LIMIT 1
    FOR UPDATE SKIP LOCKED
), bump AS (
    UPDATE annotation_rankingtask t
    SET leased_count = t.leased_count + 1,
        state = CASE WHEN t.leased_count + 1 + t.completed_count >= t.required_annotations
                     THEN 'full' ELSE 'open' END
    FROM pick
    WHERE t.id = pick.id
    RETURNING t.id
), lease AS (
    INSERT INTO annotation_assignment
        (task_id, project_id, annotator_id, state, leased_at, expires_at, finished_at, skip_reason)
    SELECT bump.id, %(project)s, %(user)s, 'active', %(now)s, %(until)s, NULL, '' FROM bump
    ON CONFLICT (task_id, annotator_id) DO UPDATE
        SET state = 'active', leased_at = EXCLUDED.leased_at, expires_at = EXCLUDED.expires_at, finished_at = NULL
    RETURNING id, task_id, expires_at
), got AS (
    SELECT id, task_id, expires_at FROM lease
    UNION ALL
    SELECT id, task_id, expires_at FROM own
)
SELECT got.id, got.task_id, got.expires_at, t.prompt_id, t.candidate_ids, p.text, p.image_id, i.width, i.height,
       (SELECT json_agg(json_build_array(c.id, c.text))
          FROM annotation_candidate c
         WHERE c.id IN (SELECT value::bigint FROM jsonb_array_elements(t.candidate_ids))) AS candidates
FROM got
JOIN annotation_rankingtask t ON t.id = got.task_id
JOIN annotation_prompt p ON p.id = t.prompt_id
JOIN annotation_image i ON i.id = p.image_id
"""


# The same for a gold task: the pick reads state 'gold' and no counters, and the lease leaves them alone.
_OPEN_PICK = """AND t.state = 'open'
      AND t.leased_count + t.completed_count < t.required_annotations
"""
_OPEN_BUMP = NEXT_TASK_SQL[NEXT_TASK_SQL.index("bump AS ("):NEXT_TASK_SQL.index("), lease AS (")]
assert _OPEN_PICK in NEXT_TASK_SQL
GOLD_TASK_SQL = NEXT_TASK_SQL.replace(_OPEN_PICK, "AND t.state = 'gold'\n").replace(
    _OPEN_BUMP, "bump AS (\n    SELECT pick.id FROM pick\n")


def _loaded(model, **values):
    """An instance of ``model`` holding just ``values`` (attnames); every other field is deferred.
    ``from_db`` wants the values in the model's field order, which this takes care of."""
    names = [name for name in field_order(model) if name in values]
    return model.from_db(connection.alias, names, [values[name] for name in names])


def lease(*, annotator, project: Project, now: datetime, gold: bool = False) -> Assignment | None:
    """``PostgresQueue._lease``: one statement."""
    until = now + timedelta(minutes=project.lease_minutes)
    with execute(GOLD_TASK_SQL if gold else NEXT_TASK_SQL, {"user": annotator.pk, "project": project.pk, "now": now, "until": until}) as cur:
        row = cur.fetchone()
    if row is None:
        return None
    assignment_id, task_id, expires_at, prompt_id, candidate_ids, text, image_id, width, height, candidates = row
    if isinstance(candidate_ids, str):  # Django has psycopg load jsonb as text (JSONField decodes it)
        candidate_ids = json.loads(candidate_ids)
    if isinstance(candidates, str):
        candidates = json.loads(candidates)
    prompt = _loaded(Prompt, id=prompt_id, project_id=project.pk, image_id=image_id, text=text)
    prompt.image = _loaded(Image, id=image_id, width=width, height=height)
    prompt.project = project
    task = _loaded(RankingTask, id=task_id, project_id=project.pk, prompt_id=prompt_id, candidate_ids=candidate_ids)
    task.prompt = prompt
    task.project = project
    task.prefetched_candidates = [
        _loaded(Candidate, id=cid, prompt_id=prompt_id, text=ctext) for cid, ctext in candidates or []
    ]
    assignment = _loaded(
        Assignment, id=assignment_id, task_id=task_id, project_id=project.pk, annotator_id=annotator.pk,
        state=Assignment.State.ACTIVE, expires_at=expires_at,
    )
    assignment.task = task
    assignment.project = project
    return assignment


# The task, locked, with the annotator's assignment. (A repeated client_uuid is looked up only when the
# assignment says "submitted", and a reused one trips the unique constraint: the happy path reads no
# ranking, which also spares a plan cached while the rankings table was empty.)
LOCK_FOR_SUBMIT_SQL = """
SELECT t.project_id, t.prompt_id, t.candidate_ids, t.state, t.leased_count, t.completed_count,
       t.required_annotations, a.id, a.state, a.expires_at
FROM annotation_rankingtask t
LEFT JOIN annotation_assignment a ON a.task_id = t.id AND a.annotator_id = %(user)s
WHERE t.id = %(task)s
FOR UPDATE OF t
"""

# The ranking, its pairs, the assignment and the task's counters, in one round trip.
WRITE_SUBMIT_SQL = """
WITH r AS (
    INSERT INTO annotation_ranking
        (task_id, project_id, annotator_id, ordering, FLAG_COLUMNS, rationale, time_spent_ms, client_uuid, created_at)
    VALUES (%(task)s, %(project)s, %(user)s, %(ordering)s::jsonb, FLAG_VALUES,
            %(rationale)s, %(time_spent_ms)s, %(uuid)s, %(now)s)
    RETURNING id
), pp AS (
    INSERT INTO annotation_preferencepair (ranking_id, project_id, prompt_id, chosen_id, rejected_id, margin, created_at)
    SELECT r.id, %(project)s, %(prompt)s, x.chosen, x.rejected, x.margin, %(now)s
    FROM r, unnest(%(chosen)s::bigint[], %(rejected)s::bigint[], %(margin)s::int[]) AS x(chosen, rejected, margin)
), ua AS (
    UPDATE annotation_assignment SET state = 'submitted', finished_at = %(now)s WHERE id = %(assignment)s
), ut AS (
    UPDATE annotation_rankingtask
    SET leased_count = %(leased)s, completed_count = %(completed)s, state = %(state)s
    WHERE id = %(task)s
)
SELECT id FROM r
""".replace("FLAG_COLUMNS", ", ".join(Ranking.flag_columns(()))).replace(
    "FLAG_VALUES", ", ".join(f"%({column})s" for column in Ranking.flag_columns(())))


def lock_for_submit(*, annotator, task_id: int):
    """(task, the annotator's assignment or None), the task row locked until the transaction ends; None
    if there is no such task. Call inside ``transaction.atomic``."""
    with execute(LOCK_FOR_SUBMIT_SQL, {"task": task_id, "user": annotator.pk}) as cur:
        row = cur.fetchone()
    if row is None:
        return None
    (project_id, prompt_id, candidate_ids, state, leased, completed, required,
     assignment_id, assignment_state, expires_at) = row
    if isinstance(candidate_ids, str):
        candidate_ids = json.loads(candidate_ids)
    task = _loaded(
        RankingTask, id=task_id, project_id=project_id, prompt_id=prompt_id, candidate_ids=candidate_ids, state=state,
        leased_count=leased, completed_count=completed, required_annotations=required,
    )
    assignment = None
    if assignment_id is not None:
        assignment = _loaded(
            Assignment, id=assignment_id, task_id=task_id, project_id=project_id, annotator_id=annotator.pk,
            state=assignment_state, expires_at=expires_at,
        )
    return task, assignment


def write_submit(
    *, annotator, task: RankingTask, assignment: Assignment, groups: list[list[int]], pairs: list[tuple[int, int, int]],
    flags, rationale: str, time_spent_ms: int | None, client_uuid: uuid.UUID, now: datetime,
) -> Ranking:
    """Write what ``PostgresQueue._submit`` decided; ``task`` carries the new counters and state."""
    params = {
        "task": task.pk, "project": task.project_id, "prompt": task.prompt_id, "user": annotator.pk,
        "ordering": json.dumps(groups), **Ranking.flag_columns(flags), "rationale": rationale,
        "time_spent_ms": time_spent_ms,
        "uuid": client_uuid, "now": now, "assignment": assignment.pk,
        "chosen": [p[0] for p in pairs], "rejected": [p[1] for p in pairs], "margin": [p[2] for p in pairs],
        "leased": task.leased_count, "completed": task.completed_count, "state": task.state,
    }
    with execute(WRITE_SUBMIT_SQL, params) as cur:
        (ranking_id,) = cur.fetchone()
    return Ranking(
        id=ranking_id, task_id=task.pk, project_id=task.project_id, annotator_id=annotator.pk, ordering=groups,
        **Ranking.flag_columns(flags), rationale=rationale, time_spent_ms=time_spent_ms, client_uuid=client_uuid,
        created_at=now,
    )


EXPIRED_SQL = """
SELECT id, task_id FROM annotation_assignment
WHERE state = 'active' AND expires_at <= %(now)s AND project_id = %(project)s
LIMIT %(limit)s
"""


def expired_leases(*, project_id: int, now: datetime, limit: int) -> list[tuple[int, int]]:
    """(assignment id, task id) of leases that ran out; the partial index on active leases answers it."""
    with execute(EXPIRED_SQL, {"project": project_id, "now": now, "limit": limit}) as cur:
        return cur.fetchall()


class PostgresQueue(Queue):
    name = "postgres"

    def _stale_leases(self, project, now, limit):
        if project is None:  # the housekeeping job's sweep over every project; rare, the ORM does
            return stale_leases_orm(project, now, limit)
        return expired_leases(project_id=project.pk, now=now, limit=limit)

    def _lease(self, *, annotator, project: Project, now: datetime, gold: bool = False) -> Assignment | None:
        return lease(annotator=annotator, project=project, now=now, gold=gold)

    def _submit(self, annotator, task_id, ordering, client_uuid, flags, rationale, time_spent_ms, now) -> SubmitResult:
        """The same decisions as ``OrmQueue._submit`` in two statements: lock and read, then write."""
        locked = lock_for_submit(annotator=annotator, task_id=task_id)
        if locked is None:
            raise NotFound(f"task {task_id} does not exist")
        task, assignment = locked
        if assignment is not None and assignment.state == Assignment.State.SUBMITTED:
            # Ranked already: a repeat of that submit answers with it (else check_may_submit refuses).
            repeat = repeat_of(client_uuid, annotator, task_id)
            if repeat is not None:
                return SubmitResult(repeat, created=False)
        groups = normalise_ordering(ordering, task.candidate_ids)
        check_may_submit(task, assignment, now)
        count_submit(task, assignment)
        ranking = write_submit(
            annotator=annotator, task=task, assignment=assignment, groups=groups, pairs=pairs_from_groups(groups),
            flags=flags, rationale=rationale, time_spent_ms=time_spent_ms, client_uuid=client_uuid, now=now,
        )
        return SubmitResult(ranking, created=True, gold=task.state == RankingTask.State.GOLD)
