-- Issue 13: the audit log, remembered experiment memberships and "sign out everywhere".

-- Who did what to which object, when and from where. Append-only: rows are written in the
-- transaction of the change they record and never changed; only the retention purge (which
-- sets `slices.audit_purge` for its own transaction) may delete old ones.
CREATE TABLE audit_log (
    id            bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    -- The acting user (`user_…`), when known; NULL for a refused request without a valid token.
    user_id       text,
    -- The token or session subject that acted (`user_…` or `exp_…`), when known.
    actor         text,
    experiment_id text,
    -- Dotted verb, e.g. `resource.create`, `image.delete`, `session.sign_in`.
    action        text NOT NULL,
    -- The typed id of the object acted on (`resource_<site>_…`), or another name of it.
    object_id     text,
    -- `ok`, or `refused` for an attempt the access rules turned down (401/403).
    outcome       text NOT NULL CHECK (outcome IN ('ok', 'refused')),
    -- `api` (bearer token), `dashboard` (session) or `system` (worker, sweeps).
    via           text NOT NULL,
    client_ip     text,
    user_agent    text,
    detail        jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_log_at ON audit_log (at DESC, id DESC);
CREATE INDEX audit_log_user ON audit_log (user_id, at DESC);
CREATE INDEX audit_log_experiment ON audit_log (experiment_id, at DESC);
CREATE INDEX audit_log_object ON audit_log (object_id, at DESC);
CREATE INDEX audit_log_action ON audit_log (action, at DESC);

CREATE FUNCTION audit_log_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    IF TG_OP = 'DELETE' AND current_setting('slices.audit_purge', true) = 'on' THEN
        RETURN OLD;
    END IF;
    RAISE EXCEPTION 'audit_log is append-only (% refused)', TG_OP
        USING ERRCODE = 'insufficient_privilege';
END $$;
CREATE TRIGGER audit_log_append_only BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_append_only();
CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_append_only();

-- A signed-in user's experiments: attached once with a valid experiment token, remembered until
-- the experiment expires, so the dashboard acts for the user after the token's ~15 minutes.
CREATE TABLE experiment_memberships (
    user_id               text NOT NULL,
    experiment_id         text NOT NULL,
    project_id            text NOT NULL DEFAULT '',
    experiment_name       text,
    experiment_expires_at timestamptz NOT NULL,
    attached_at           timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (user_id, experiment_id)
);
CREATE INDEX experiment_memberships_expiry ON experiment_memberships (experiment_expires_at);

-- "Sign out everywhere": every dashboard session of the user signed in before this moment is
-- void.
CREATE TABLE user_sign_outs (
    user_id       text PRIMARY KEY,
    signed_out_at timestamptz NOT NULL
);
