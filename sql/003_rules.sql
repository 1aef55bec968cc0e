-- Rules the database enforces itself, because admin SQL is a supported interface.
-- Every refusal names the object and the rule, in one line.

CREATE TABLE pbx.pjsip_options (
    section   text NOT NULL,       -- endpoint | aor | auth | identify | registration | domain_alias
    name      text NOT NULL,
    type      text NOT NULL,       -- string | bool | uint | int | enum | codec | ...
    enum      text[],              -- allowed values for enum options
    multi     boolean NOT NULL DEFAULT false,
    settable  boolean NOT NULL DEFAULT true,   -- false for links the project generates
    realtime  boolean NOT NULL DEFAULT true,   -- false when Asterisk's realtime schema has no column
    PRIMARY KEY (section, name)
);

CREATE FUNCTION pbx.object_label(obj bigint) RETURNS text
LANGUAGE sql STABLE AS $$
    SELECT o.kind || ' ' || t.name || '/' || o.name
    FROM pbx.objects o JOIN pbx.tenants t ON t.id = o.tenant_id WHERE o.id = obj
$$;

-- Option sections map onto catalog sections: an outbound auth is an auth object.
CREATE FUNCTION pbx.catalog_section(section text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$ SELECT CASE section WHEN 'outbound_auth' THEN 'auth' ELSE section END $$;

CREATE FUNCTION pbx.validate_option() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    opt   pbx.pjsip_options;
    label text := pbx.object_label(NEW.object_id);
    item  text;
BEGIN
    SELECT * INTO opt FROM pbx.pjsip_options
    WHERE section = pbx.catalog_section(NEW.section) AND name = NEW.option;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: unknown % option ''%'' (rule: option names must be Asterisk 22 PJSIP % options)',
            label, NEW.section, NEW.option, pbx.catalog_section(NEW.section) USING ERRCODE = 'check_violation';
    END IF;
    IF NOT opt.settable THEN
        RAISE EXCEPTION '%: % option ''%'' is a link the project generates (rule: links cannot be set)',
            label, NEW.section, NEW.option USING ERRCODE = 'check_violation';
    END IF;
    IF NOT opt.realtime THEN
        RAISE EXCEPTION '%: % option ''%'' has no column in Asterisk 22''s realtime schema (rule: only options realtime Sorcery can read are accepted)',
            label, NEW.section, NEW.option USING ERRCODE = 'check_violation';
    END IF;
    IF cardinality(NEW.value) = 0 THEN
        RAISE EXCEPTION '%: % option ''%'' has no value (rule: an option needs a value)',
            label, NEW.section, NEW.option USING ERRCODE = 'check_violation';
    END IF;
    IF cardinality(NEW.value) > 1 AND NOT opt.multi THEN
        RAISE EXCEPTION '%: % option ''%'' takes one value, got a list (rule: only multi-valued options take lists)',
            label, NEW.section, NEW.option USING ERRCODE = 'check_violation';
    END IF;
    FOREACH item IN ARRAY NEW.value LOOP
        IF item IS NULL THEN
            RAISE EXCEPTION '%: % option ''%'' has a null value (rule: values are strings or numbers)',
                label, NEW.section, NEW.option USING ERRCODE = 'check_violation';
        END IF;
        IF NOT pbx.value_is_valid(opt, item) THEN
            RAISE EXCEPTION '%: % option ''%'' = ''%'' is not a valid % (rule: values Asterisk would reject are refused)',
                label, NEW.section, NEW.option, item,
                CASE WHEN opt.enum IS NOT NULL THEN 'value (one of ' || array_to_string(opt.enum, ', ') || ')'
                     ELSE opt.type END
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    RETURN NEW;
END $$;

CREATE FUNCTION pbx.value_is_valid(opt pbx.pjsip_options, v text) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN opt.name = 'set_var' THEN v ~ '^[^=]+=' 
        WHEN opt.type = 'bool' THEN lower(v) IN ('yes', 'no', 'true', 'false', 'on', 'off', '1', '0', 'y', 'n', 't', 'f')
        WHEN opt.type = 'uint' THEN v ~ '^\s*[0-9]+\s*$'
        WHEN opt.type = 'int' THEN v ~ '^\s*-?[0-9]+\s*$'
        WHEN opt.type = 'double' THEN v ~ '^\s*-?[0-9]+(\.[0-9]*)?\s*$'
        WHEN opt.enum IS NOT NULL THEN lower(v) = ANY (SELECT lower(e) FROM unnest(opt.enum) e)
        ELSE v !~ '[\r\n\x01-\x08]'
    END
$$;

CREATE TRIGGER validate_option BEFORE INSERT OR UPDATE ON pbx.object_options
    FOR EACH ROW EXECUTE FUNCTION pbx.validate_option();

-- Parent cycles. The tenants row lock makes two transactions that would each close half of a
-- cycle run one after the other, so the second one sees the first one's links.
CREATE FUNCTION pbx.refuse_parent_cycles() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    cyc record;
BEGIN
    UPDATE pbx.tenants SET links_version = links_version + 1
    WHERE id IN (SELECT DISTINCT tenant_id FROM new_links);

    WITH RECURSIVE walk(start_id, node, path) AS (
        SELECT n.object_id, n.parent_id, ARRAY[n.object_id, n.parent_id] FROM new_links n
        UNION ALL
        SELECT w.start_id, p.parent_id, w.path || p.parent_id
        FROM walk w JOIN pbx.object_parents p ON p.object_id = w.node
        WHERE w.node <> w.start_id AND NOT (p.parent_id = ANY (w.path[2:]))
    )
    SELECT start_id, path INTO cyc FROM walk WHERE node = start_id LIMIT 1;
    IF FOUND THEN
        RAISE EXCEPTION '%: parent cycle % (rule: template parents cannot form a cycle)',
            pbx.object_label(cyc.start_id),
            (SELECT string_agg(o.name, ' -> ' ORDER BY x.i)
             FROM unnest(cyc.path) WITH ORDINALITY AS x(id, i) JOIN pbx.objects o ON o.id = x.id)
            USING ERRCODE = 'check_violation';
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER refuse_parent_cycles_ins AFTER INSERT ON pbx.object_parents
    REFERENCING NEW TABLE AS new_links FOR EACH STATEMENT EXECUTE FUNCTION pbx.refuse_parent_cycles();
CREATE TRIGGER refuse_parent_cycles_upd AFTER UPDATE ON pbx.object_parents
    REFERENCING NEW TABLE AS new_links FOR EACH STATEMENT EXECUTE FUNCTION pbx.refuse_parent_cycles();

-- A referenced template/endpoint/extension cannot be deleted. The foreign keys cascade only so that
-- deleting a whole tenant works; while the tenant exists these triggers refuse first.
CREATE FUNCTION pbx.refuse_referenced_object_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    user_label text;
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pbx.tenants WHERE id = OLD.tenant_id) THEN
        RETURN OLD;  -- the tenant itself is being deleted
    END IF;
    SELECT pbx.object_label(p.object_id) INTO user_label
    FROM pbx.object_parents p WHERE p.parent_id = OLD.id AND p.object_id <> OLD.id LIMIT 1;
    IF user_label IS NULL THEN
        SELECT 'extension ' || t.name || '/' || e.number INTO user_label
        FROM pbx.extension_endpoints e JOIN pbx.tenants t ON t.id = e.tenant_id
        WHERE e.endpoint_id = OLD.id LIMIT 1;
    END IF;
    IF user_label IS NOT NULL THEN
        RAISE EXCEPTION '%: still used by % (rule: a referenced % cannot be deleted)',
            pbx.object_label(OLD.id), user_label, OLD.kind USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER refuse_referenced_object_delete BEFORE DELETE ON pbx.objects
    FOR EACH ROW EXECUTE FUNCTION pbx.refuse_referenced_object_delete();

CREATE FUNCTION pbx.refuse_referenced_extension_delete() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    user_number text;
    tenant_name text;
BEGIN
    SELECT name INTO tenant_name FROM pbx.tenants WHERE id = OLD.tenant_id;
    IF tenant_name IS NULL THEN
        RETURN OLD;
    END IF;
    SELECT number INTO user_number FROM pbx.extensions
    WHERE tenant_id = OLD.tenant_id AND forward_to = OLD.number AND number <> OLD.number LIMIT 1;
    IF user_number IS NULL THEN
        SELECT number INTO user_number FROM pbx.rank_members
        WHERE tenant_id = OLD.tenant_id AND member = OLD.number AND number <> OLD.number LIMIT 1;
    END IF;
    IF user_number IS NOT NULL THEN
        RAISE EXCEPTION 'extension %/%: still used by extension %/% (rule: a referenced extension cannot be deleted)',
            tenant_name, OLD.number, tenant_name, user_number USING ERRCODE = 'foreign_key_violation';
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER refuse_referenced_extension_delete BEFORE DELETE ON pbx.extensions
    FOR EACH ROW EXECUTE FUNCTION pbx.refuse_referenced_extension_delete();
