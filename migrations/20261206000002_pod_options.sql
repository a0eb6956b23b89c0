-- Issue 15: a Pod resource's container options (`env`, `command`, `args`, `ports`; the JSON
-- of app::pod_options::PodOptions, `{}` when none): carried to the Pod spec and its Service.
ALTER TABLE resources ADD COLUMN pod_options jsonb NOT NULL DEFAULT '{}'::jsonb;
