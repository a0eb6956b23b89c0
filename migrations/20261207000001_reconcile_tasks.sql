-- Reconcile work through the task queue (issue 12): removing an orphan (a Pod or Nova server
-- carrying our marks whose resource the database does not know, or knows as ended) is a task
-- of its own, claimed, leased, retried with backoff and ended like every other, so that several
-- replicas never act on one object twice and a restart forgets neither the removal nor how
-- long the orphan has been seen (its grace period is the task's run_after).
--
-- Such a task names no resource (there is none, or it has ended); `target` holds the object:
-- {"key": "pod/<uid>" | "server/<user>/<cloud>/<server id>", "handle": {...},
--  "resource_id": "resource_<site>_..." | null}.
ALTER TABLE tasks ALTER COLUMN resource_id DROP NOT NULL;
ALTER TABLE tasks ADD COLUMN target jsonb;
ALTER TABLE tasks DROP CONSTRAINT tasks_kind_known;
ALTER TABLE tasks ADD CONSTRAINT tasks_kind_known
    CHECK (kind IN ('create', 'delete', 'remove_orphan'));
ALTER TABLE tasks ADD CONSTRAINT tasks_subject_known CHECK (
    CASE kind
        WHEN 'remove_orphan' THEN resource_id IS NULL AND COALESCE(target ? 'key', false)
        ELSE resource_id IS NOT NULL AND target IS NULL
    END);

-- One unfinished removal per object: a pass that sees the orphan again adds nothing.
CREATE UNIQUE INDEX tasks_one_removal_per_orphan ON tasks ((target ->> 'key'))
    WHERE kind = 'remove_orphan' AND status IN ('queued', 'running');
-- The reconcile tasks' own claim reads only these.
CREATE INDEX tasks_reconcile_due_idx ON tasks (run_after)
    WHERE kind = 'remove_orphan' AND status IN ('queued', 'running');
