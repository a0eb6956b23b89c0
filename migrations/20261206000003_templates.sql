-- Issue 15: templates ("profiles"), a named set of resources with parameters, in immutable
-- versions (app::templates describes the JSON of `parameters` and `resources`).
CREATE TABLE templates (
    id            uuid PRIMARY KEY,
    name          text NOT NULL CHECK (length(name) BETWEEN 1 AND 64),
    description   text NOT NULL DEFAULT '',
    -- site: everyone (admins publish); project / experiment: that owner's members.
    scope         text NOT NULL CHECK (scope IN ('site', 'project', 'experiment')),
    project_id    text,
    experiment_id text,
    -- Shipped with the software (the QKD link); kept by name at start-up.
    builtin       boolean NOT NULL DEFAULT false,
    created_by    text,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    CHECK (scope = 'site'
        OR (scope = 'project' AND project_id IS NOT NULL)
        OR (scope = 'experiment' AND experiment_id IS NOT NULL))
);
CREATE UNIQUE INDEX templates_name
    ON templates (scope, coalesce(project_id, ''), coalesce(experiment_id, ''), name);
CREATE TRIGGER templates_updated_at BEFORE UPDATE ON templates
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();

CREATE TABLE template_versions (
    template_id uuid NOT NULL REFERENCES templates (id) ON DELETE CASCADE,
    version     integer NOT NULL CHECK (version >= 1),
    parameters  jsonb NOT NULL,
    resources   jsonb NOT NULL,
    notes       text NOT NULL DEFAULT '',
    created_by  text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (template_id, version)
);

-- A published version never changes: instantiations name it.
CREATE FUNCTION template_versions_immutable() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'template versions are immutable' USING ERRCODE = 'restrict_violation';
END
$$;
CREATE TRIGGER template_versions_immutable BEFORE UPDATE ON template_versions
    FOR EACH ROW EXECUTE FUNCTION template_versions_immutable();
