-- Issue 12: idempotent requests and tasks that wait out a backend outage.

-- A client's own request id (SLICES clients send a UUID as `request_id`) and a SHA-256 of the
-- request body it came with (without `request_id` and `tokens`): the same experiment sending
-- the same id again gets the first answer back; with another body, a 409.
ALTER TABLE resource_requests
    ADD COLUMN client_request_id uuid,
    ADD COLUMN body_sha256 bytea;
CREATE UNIQUE INDEX resource_requests_client_id
    ON resource_requests (experiment_id, client_request_id)
    WHERE client_request_id IS NOT NULL;

-- Since when the backend a queued task waits for has been unreachable (NULL: it is not
-- waiting out an outage). A task fails only once the outage outlasts the budget.
ALTER TABLE tasks ADD COLUMN unreachable_since timestamptz;

