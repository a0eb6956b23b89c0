-- Tells every server process that a GET /resources page may have changed (app/src/ssr/list_cache.rs):
-- one notification per statement on channel `slices_resources_changed`, from whichever process
-- or tool wrote. PostgreSQL folds identical notifications of one transaction into one.
CREATE FUNCTION notify_resources_changed() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('slices_resources_changed', '');
    RETURN NULL;
END
$$;

-- Any column of a resource can appear in a page.
CREATE TRIGGER resources_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON resources
    FOR EACH STATEMENT EXECUTE FUNCTION notify_resources_changed();
-- A new task becomes its resource's `last_task_id`.
CREATE TRIGGER tasks_added AFTER INSERT OR DELETE OR TRUNCATE ON tasks
    FOR EACH STATEMENT EXECUTE FUNCTION notify_resources_changed();
-- The image's login name is part of `ssh_command`.
CREATE TRIGGER disk_images_changed AFTER UPDATE OR DELETE OR TRUNCATE ON disk_images
    FOR EACH STATEMENT EXECUTE FUNCTION notify_resources_changed();
