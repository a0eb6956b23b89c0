-- Issue 11: a request's SSH keys are stored once, in a row of their own, and each resource
-- names the request it came from (before, every resource row carried a copy of the keys).
-- Existing resources each become a request of their own, keeping their keys.
CREATE TABLE resource_requests (
    id                   uuid        PRIMARY KEY,
    experiment_id        text        NOT NULL,
    ssh_authorized_keys  text[]      NOT NULL DEFAULT '{}',
    created_at           timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE resources ADD COLUMN request_id uuid REFERENCES resource_requests (id);

INSERT INTO resource_requests (id, experiment_id, ssh_authorized_keys, created_at)
    SELECT id, experiment_id, ssh_authorized_keys, created_at FROM resources;
UPDATE resources SET request_id = id;

ALTER TABLE resources ALTER COLUMN request_id SET NOT NULL;
ALTER TABLE resources DROP COLUMN ssh_authorized_keys;
CREATE INDEX resources_request_id ON resources (request_id);
