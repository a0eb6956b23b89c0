-- `updated_at` is kept by one row trigger instead of every UPDATE statement naming it
-- (`now()` is the transaction's start time, as the statements used).
CREATE FUNCTION set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

CREATE TRIGGER disk_images_updated_at BEFORE UPDATE ON disk_images
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER flavors_updated_at BEFORE UPDATE ON flavors
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER resources_updated_at BEFORE UPDATE ON resources
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER tasks_updated_at BEFORE UPDATE ON tasks
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
CREATE TRIGGER user_clouds_updated_at BEFORE UPDATE ON user_clouds
    FOR EACH ROW EXECUTE FUNCTION set_updated_at();
