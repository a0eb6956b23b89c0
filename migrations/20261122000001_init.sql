-- slices-blueprint initial schema.
-- Ids are stored as UUIDv7 and rendered at the edges as typed ids `<type>_<site>_<suffix>`
-- (see app/src/ids.rs and ../shared/slices-api.md "Identifiers").

CREATE TABLE disk_images (
    id                 uuid PRIMARY KEY,
    friendly_name      text        NOT NULL,
    cluster_id         text        NOT NULL DEFAULT 'default',
    location           text        NOT NULL,
    default_username   text        NOT NULL DEFAULT '',
    min_disk_mb        integer     NOT NULL DEFAULT 0,
    min_ram_mib        integer     NOT NULL DEFAULT 0,
    short_description  text        NOT NULL DEFAULT '',
    long_description   text        NOT NULL DEFAULT '',
    tags               text[]      NOT NULL DEFAULT '{}',
    hidden             boolean     NOT NULL DEFAULT false,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT disk_images_min_disk_nonneg CHECK (min_disk_mb >= 0),
    CONSTRAINT disk_images_min_ram_nonneg CHECK (min_ram_mib >= 0)
);

CREATE TABLE flavors (
    id             uuid PRIMARY KEY,
    friendly_name  text        NOT NULL,
    description    text        NOT NULL DEFAULT '',
    flavor_type    text        NOT NULL,
    ram_mib        integer     NOT NULL,
    vcpus          integer     NOT NULL,
    disk_mb        integer     NOT NULL DEFAULT 0,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT flavors_type_known CHECK (flavor_type IN ('vm', 'k8s')),
    CONSTRAINT flavors_ram_positive CHECK (ram_mib > 0),
    CONSTRAINT flavors_vcpus_positive CHECK (vcpus > 0),
    CONSTRAINT flavors_disk_nonneg CHECK (disk_mb >= 0)
);

-- A resource belongs to an experiment (shared by all its members) and remembers who asked.
CREATE TABLE resources (
    id                   uuid PRIMARY KEY,
    experiment_id        text        NOT NULL,
    project_id           text        NOT NULL DEFAULT '',
    requested_by         text,
    friendly_name        text        NOT NULL,
    disk_image_id        uuid        NOT NULL,
    flavor_id            uuid        NOT NULL,
    flavor_type          text        NOT NULL,
    network_name         text,
    userdata             text,
    ssh_authorized_keys  text[]      NOT NULL DEFAULT '{}',
    expires_at           timestamptz NOT NULL,
    allocation_state     text        NOT NULL DEFAULT 'requested',
    operational_state    text        NOT NULL DEFAULT 'pending',
    status_message       text        NOT NULL DEFAULT '',
    -- What the backend made: pod name/namespace/IP/node, or server id/addresses.
    backend_details      jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at           timestamptz NOT NULL DEFAULT now(),
    updated_at           timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT resources_disk_image_fk FOREIGN KEY (disk_image_id) REFERENCES disk_images (id) ON DELETE RESTRICT,
    CONSTRAINT resources_flavor_fk FOREIGN KEY (flavor_id) REFERENCES flavors (id) ON DELETE RESTRICT,
    CONSTRAINT resources_flavor_type_known CHECK (flavor_type IN ('vm', 'k8s')),
    CONSTRAINT resources_allocation_known CHECK (allocation_state IN
        ('requested', 'provisioning', 'provisioned', 'deleting', 'deleted', 'expired', 'failed')),
    CONSTRAINT resources_operational_known CHECK (operational_state IN ('pending', 'booting', 'ready', 'error'))
);

-- A name may be reused once the resource holding it is gone (its Pod or Server was removed).
CREATE UNIQUE INDEX resources_live_name_unique ON resources (experiment_id, friendly_name)
    WHERE allocation_state NOT IN ('deleted', 'expired', 'failed');
CREATE INDEX resources_experiment_idx ON resources (experiment_id, created_at);
CREATE INDEX resources_requested_by_idx ON resources (requested_by, created_at);
CREATE INDEX resources_expiry_idx ON resources (expires_at)
    WHERE allocation_state IN ('requested', 'provisioning', 'provisioned');

-- Durable tasks: one row per operation on a resource. Workers claim rows with
-- FOR UPDATE SKIP LOCKED and hold a lease (locked_until) that they renew while running;
-- a row left `running` with an expired lease belonged to a crashed worker and is claimed again.
CREATE TABLE tasks (
    id            uuid PRIMARY KEY,
    resource_id   uuid        NOT NULL,
    kind          text        NOT NULL,
    status        text        NOT NULL DEFAULT 'queued',
    completed     smallint    NOT NULL DEFAULT 0,
    message       text        NOT NULL DEFAULT '',
    attempts      integer     NOT NULL DEFAULT 0,
    max_attempts  integer     NOT NULL DEFAULT 5,
    run_after     timestamptz NOT NULL DEFAULT now(),
    locked_by     text,
    locked_until  timestamptz,
    created_at    timestamptz NOT NULL DEFAULT now(),
    updated_at    timestamptz NOT NULL DEFAULT now(),
    started_at    timestamptz,
    finished_at   timestamptz,
    CONSTRAINT tasks_resource_fk FOREIGN KEY (resource_id) REFERENCES resources (id) ON DELETE CASCADE,
    CONSTRAINT tasks_kind_known CHECK (kind IN ('create', 'delete')),
    CONSTRAINT tasks_status_known CHECK (status IN ('queued', 'running', 'finished', 'failed')),
    CONSTRAINT tasks_completed_range CHECK (completed BETWEEN 0 AND 100)
);

CREATE INDEX tasks_claimable_idx ON tasks (run_after) WHERE status IN ('queued', 'running');
CREATE INDEX tasks_resource_idx ON tasks (resource_id, created_at);
