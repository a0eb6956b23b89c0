-- OpenStack VMs (issue #3): each user's clouds.yaml, sealed at rest, and the origin of
-- catalog entries imported from a site cloud.

-- One clouds.yaml per user (the `sub` of their SLICES user token). `sealed_yaml` is the whole
-- file sealed with XChaCha20-Poly1305 under CLOUDS_ENCRYPTION_KEY (app/src/ssr/secrets.rs);
-- `summary` is the redacted per-cloud summary shown back to the user (never a secret).
CREATE TABLE user_clouds (
    user_id        text        PRIMARY KEY,
    sealed_yaml    text        NOT NULL,
    summary        jsonb       NOT NULL,
    default_cloud  text        NOT NULL,
    uploaded_at    timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- Catalog entries made by `sync-catalog` remember the Glance image / Nova flavor they came
-- from, so a second import updates instead of duplicating. NULL for hand-made entries.
ALTER TABLE disk_images ADD COLUMN source_cloud text, ADD COLUMN source_id text;
ALTER TABLE flavors ADD COLUMN source_cloud text, ADD COLUMN source_id text;
CREATE UNIQUE INDEX disk_images_source_unique ON disk_images (source_cloud, source_id)
    WHERE source_id IS NOT NULL;
CREATE UNIQUE INDEX flavors_source_unique ON flavors (source_cloud, source_id)
    WHERE source_id IS NOT NULL;
