-- Tenant fences and secrets (issue #15). Everything a tenant writes, through `pbxctl apply` or plain
-- SQL as a tenant admin, is checked here, so the two paths cannot disagree:
--   * values Asterisk would choke on (lengths, formats, codecs, URIs, ranges, control characters);
--   * the operator's option policy (pbx.option_policy): options that reach the node itself;
--   * dialplan contexts the node defines or the project reserves, transports that do not exist;
--   * identify matches that overlap another endpoint's, domains and aliases claimed twice;
--   * inbound SIP passwords, stored only as md5(username:realm:password).
-- Every refusal is one line naming the object, the option and the rule, and never quotes a secret.

-- ---------------------------------------------------------------------------------------------
-- What the checks compare with

-- The node's codec names (Asterisk 22's `core show codecs`, audio, video, image and text).
CREATE TABLE pbx.codecs (name text PRIMARY KEY);
INSERT INTO pbx.codecs (name) VALUES
    ('ulaw'), ('alaw'), ('gsm'), ('g726'), ('g726aal2'), ('adpcm'), ('slin'), ('slin12'), ('slin16'),
    ('slin24'), ('slin32'), ('slin44'), ('slin48'), ('slin96'), ('slin192'), ('lpc10'), ('g729'),
    ('speex'), ('speex16'), ('speex32'), ('ilbc'), ('g722'), ('g723'), ('siren7'), ('siren14'), ('testlaw'),
    ('g719'), ('opus'), ('codec2'), ('silk8'), ('silk12'), ('silk16'), ('silk24'), ('jpeg'), ('png'),
    ('h261'), ('h263'), ('h263p'), ('h264'), ('h265'), ('mpeg4'), ('vp8'), ('vp9'), ('red'), ('t140'),
    ('t38');

-- Transports are static on every node (asterisk_conf/pjsip.conf; they cannot change without a
-- restart). The operator lists here the ones the nodes define; tests/test_fences_sql.py checks that
-- every transport of the shipped pjsip.conf is listed.
CREATE TABLE pbx.transports (name text PRIMARY KEY);
INSERT INTO pbx.transports (name) VALUES
    ('transport-udp'), ('transport-tcp'), ('transport-tls'), ('transport-ws'), ('transport-wss');

-- Contexts of the nodes' own dialplan (asterisk_conf/extensions.conf; a test checks the list
-- against the file). Every name starting with `pbx-` is reserved as well, for the project's future
-- contexts. An endpoint in one of them would skip the routing controller (pbx-dial-test dials any
-- endpoint directly) or run the project's internals.
CREATE TABLE pbx.reserved_contexts (name text PRIMARY KEY);
INSERT INTO pbx.reserved_contexts (name) VALUES ('pbx-stasis'), ('pbx-dial-test'), ('pbx-hold');

-- The operator's policy: which options a tenant's objects may set, per plan. A tenant uses the rows
-- of its own plan, then those of plan `default`; an option without a row is allowed. `unfenced`
-- lifts the fences on the option's values (reserved contexts, the transport list) for that plan,
-- never the format checks. `forced` is a value every endpoint of the plan gets in that section's
-- row, whatever its templates say (a tenant cannot set the option then). Tenant admins read the
-- policy and cannot change it, nor their tenant's plan.
ALTER TABLE pbx.tenants ADD COLUMN plan text NOT NULL DEFAULT 'default';

CREATE TABLE pbx.option_policy (
    plan      text NOT NULL,
    section   text NOT NULL CHECK (section IN ('endpoint', 'aor', 'auth', 'identify', 'registration', 'outbound_auth')),
    option    text NOT NULL,
    allowed   boolean NOT NULL DEFAULT true,
    unfenced  boolean NOT NULL DEFAULT false,
    forced    text[],
    why       text,   -- said in the refusal
    PRIMARY KEY (plan, section, option)
);

-- Shipped defaults, from Asterisk 22's PJSIP option catalog: options whose value names something
-- of the node (its files, addresses, ports, engines, dialplan, QoS marking, mailboxes shared by all
-- tenants) or identifies calls by something else than an address.
INSERT INTO pbx.option_policy (plan, section, option, allowed, why)
SELECT 'default', s, o, false, w FROM (VALUES
    ('endpoint', 'rtp_engine', 'it selects an RTP engine of the node'),
    ('endpoint', 'message_context', 'MESSAGE requests would run the node''s dialplan outside routing'),
    ('endpoint', 'dtls_cert_file', 'it reads a file of the node'),
    ('endpoint', 'dtls_private_key', 'it reads a file of the node'),
    ('endpoint', 'dtls_ca_file', 'it reads a file of the node'),
    ('endpoint', 'dtls_ca_path', 'it reads a directory of the node'),
    ('endpoint', 'media_address', 'it names an address of the node'),
    ('endpoint', 'bind_rtp_to_media_address', 'it binds sockets of the node'),
    ('endpoint', 't38_bind_udptl_to_media_address', 'it binds sockets of the node'),
    ('endpoint', 'rtp_port_start', 'it sets the node''s RTP ports'),
    ('endpoint', 'rtp_port_end', 'it sets the node''s RTP ports'),
    ('endpoint', 'tos_audio', 'it marks the node''s traffic'),
    ('endpoint', 'tos_video', 'it marks the node''s traffic'),
    ('endpoint', 'cos_audio', 'it marks the node''s traffic'),
    ('endpoint', 'cos_video', 'it marks the node''s traffic'),
    ('endpoint', 'stir_shaken', 'the node''s attestation is the operator''s'),
    ('endpoint', 'stir_shaken_profile', 'the node''s attestation is the operator''s'),
    ('endpoint', 'geoloc_incoming_call_profile', 'it names a profile of the node'),
    ('endpoint', 'geoloc_outgoing_call_profile', 'it names a profile of the node'),
    ('endpoint', 'tenantid', 'the project sets tenants'),
    ('endpoint', 'mailboxes', 'mailboxes are shared by every tenant of the node'),
    ('endpoint', 'incoming_mwi_mailbox', 'mailboxes are shared by every tenant of the node'),
    ('aor', 'mailboxes', 'mailboxes are shared by every tenant of the node'),
    ('auth', 'auth_type', 'the project stores inbound passwords as md5 digests'),
    ('auth', 'md5_cred', 'the project stores inbound passwords as md5 digests'),
    ('auth', 'realm', 'the realm is the tenant''s domain'),
    ('auth', 'password_digest', 'the project stores inbound passwords as md5 digests'),
    ('auth', 'supported_algorithms_uas', 'the project stores inbound passwords as md5 digests'),
    ('auth', 'oauth_clientid', 'OAuth uses the node''s credentials'),
    ('auth', 'oauth_secret', 'OAuth uses the node''s credentials'),
    ('auth', 'refresh_token', 'OAuth uses the node''s credentials'),
    ('outbound_auth', 'oauth_clientid', 'OAuth uses the node''s credentials'),
    ('outbound_auth', 'oauth_secret', 'OAuth uses the node''s credentials'),
    ('outbound_auth', 'refresh_token', 'OAuth uses the node''s credentials'),
    ('identify', 'match_header', 'a header match would take calls meant for other tenants'),
    ('identify', 'match_request_uri', 'a request-URI match would take calls meant for other tenants')
) AS d(s, o, w);

-- The policy row that decides an option for a tenant (NULL: no row, allowed).
CREATE FUNCTION pbx.option_policy_of(tenant bigint, sec text, opt text) RETURNS pbx.option_policy
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
    SELECT p.* FROM pbx.option_policy p JOIN pbx.tenants t ON t.id = tenant
    WHERE p.section = sec AND p.option = opt AND p.plan IN (t.plan, 'default')
    ORDER BY p.plan = t.plan DESC LIMIT 1
$$;

-- A policy edit changes what the endpoints of its plan's tenants flatten to (forced values): they
-- are re-flushed like any edit. So is a tenant moved to another plan.
CREATE FUNCTION pbx.policy_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    INSERT INTO pbx.dirty_objects (object_id) SELECT id FROM pbx.objects WHERE kind = 'endpoint'
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO pbx.pending_flush DEFAULT VALUES ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE FUNCTION pbx.plan_changed() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    INSERT INTO pbx.dirty_objects (object_id)
    SELECT o.id FROM pbx.objects o JOIN new_rows n ON n.id = o.tenant_id JOIN old_rows p ON p.id = n.id
    WHERE o.kind = 'endpoint' AND n.plan IS DISTINCT FROM p.plan
    ON CONFLICT DO NOTHING;
    IF FOUND THEN
        INSERT INTO pbx.pending_flush DEFAULT VALUES ON CONFLICT DO NOTHING;
    END IF;
    RETURN NULL;
END $$;

CREATE TRIGGER policy_changed AFTER INSERT OR UPDATE OR DELETE OR TRUNCATE ON pbx.option_policy
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.policy_changed();
CREATE TRIGGER plan_changed AFTER UPDATE ON pbx.tenants
    REFERENCING OLD TABLE AS old_rows NEW TABLE AS new_rows
    FOR EACH STATEMENT EXECUTE FUNCTION pbx.plan_changed();

-- ---------------------------------------------------------------------------------------------
-- Values

-- A value as a refusal may show it: one line (control characters as '?'), at most 40 characters.
CREATE FUNCTION pbx.shown(v text) RETURNS text
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT quote_literal(regexp_replace(CASE WHEN length(v) <= 40 THEN v ELSE left(v, 37) || '...' END,
                                        '[\x01-\x1f\x7f-\x9f]', '?', 'g'))
           || CASE WHEN length(v) > 40 THEN ' (' || length(v) || ' characters)' ELSE '' END
$$;

CREATE FUNCTION pbx.is_inet(v text) RETURNS boolean
LANGUAGE plpgsql IMMUTABLE STRICT AS $$
BEGIN
    PERFORM v::inet;
    RETURN v ~ '^[0-9A-Fa-f.:]+(/[0-9]{1,3})?$' AND v !~* '^::ffff:';
EXCEPTION WHEN others THEN
    RETURN false;
END $$;

CREATE FUNCTION pbx.is_domain(v text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT length(v) <= 253
       AND v ~ '^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$'
$$;

-- A SIP or SIPS URI as Asterisk parses it for contacts, registrations and proxies.
CREATE FUNCTION pbx.is_sip_uri(v text) RETURNS boolean
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT v ~ ('^sips?:([A-Za-z0-9_.!~*''()&=+$,;?/%-]+(:[^@[:space:]<>"]*)?@)?'
                || '(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?)(:[0-9]{1,5})?'
                || '(;[^[:space:]<>"]*)?$')
$$;

-- The longest value Asterisk 22 keeps for an option (AST_MAX_CONTEXT 80 and AST_MAX_ACCOUNT_CODE 80
-- with the terminating NUL, MAX_LANGUAGE 40; 255 for the rest, the realtime drivers' varchar).
CREATE FUNCTION pbx.option_max_length(opt text) RETURNS integer
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN opt IN ('context', 'subscribe_context', 'message_context', 'overlap_context') THEN 79
        WHEN opt = 'accountcode' THEN 80
        WHEN opt = 'language' THEN 39
        WHEN opt IN ('contact', 'server_uri', 'client_uri', 'outbound_proxy', 'set_var') THEN 512
        ELSE 255
    END
$$;

-- What is wrong with one value of an option (NULL: nothing). `fenced`: the reserved-context and
-- transport fences apply (the tenant's plan may lift them).
CREATE FUNCTION pbx.value_problem(opt pbx.pjsip_options, sec text, v text, fenced boolean) RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    tok text;
    nm text;
BEGIN
    IF length(v) > pbx.option_max_length(opt.name) THEN
        RETURN 'is longer than ' || pbx.option_max_length(opt.name) || ' characters';
    END IF;
    IF v ~ '[\x01-\x1f\x7f-\x9f]' THEN
        RETURN 'contains a control character or line break';
    END IF;
    IF opt.name = 'set_var' THEN
        nm := btrim(split_part(v, '=', 1));
        IF position('=' IN v) = 0 OR nm = '' THEN
            RETURN 'is not NAME=value';
        END IF;
        -- A dialplan function on the left (GLOBAL(), DB(), FILE(), SHELL(), ...) writes the node.
        IF nm !~ '^_{0,2}[A-Za-z][A-Za-z0-9_]*$' AND nm !~ '^TIMEOUT\((absolute|digit|response)\)$' THEN
            RETURN 'sets ' || pbx.shown(nm) || ': only channel variables and TIMEOUT() can be set (functions and globals reach the node)';
        END IF;
        RETURN NULL;
    END IF;
    CASE opt.type
    WHEN 'bool' THEN
        IF lower(v) NOT IN ('yes', 'no', 'true', 'false', 'on', 'off', '1', '0', 'y', 'n', 't', 'f') THEN
            RETURN 'is not a boolean (yes or no)';
        END IF;
        RETURN NULL;
    WHEN 'uint' THEN
        IF v !~ '^\s*[0-9]{1,10}\s*$' OR btrim(v)::bigint > 2147483647 THEN
            RETURN 'is not a whole number from 0 to 2147483647';
        END IF;
        RETURN NULL;
    WHEN 'int' THEN
        IF v !~ '^\s*-?[0-9]{1,10}\s*$' OR btrim(v)::bigint NOT BETWEEN -2147483648 AND 2147483647 THEN
            RETURN 'is not a whole number from -2147483648 to 2147483647';
        END IF;
        RETURN NULL;
    WHEN 'double' THEN
        IF v !~ '^\s*-?[0-9]{1,15}(\.[0-9]{0,15})?\s*$' THEN
            RETURN 'is not a decimal number';
        END IF;
        RETURN NULL;
    WHEN 'codec' THEN
        FOREACH tok IN ARRAY string_to_array(v, ',') LOOP
            nm := lower(split_part(ltrim(btrim(tok), '!'), ':', 1));
            CONTINUE WHEN btrim(tok) = '';
            IF btrim(tok) !~ '^!?[A-Za-z0-9_]+(:[0-9]{1,4})?$'
               OR (nm <> 'all' AND NOT EXISTS (SELECT 1 FROM pbx.codecs c WHERE c.name = nm)) THEN
                RETURN 'names codec ' || pbx.shown(btrim(tok)) || ', which the node does not have';
            END IF;
        END LOOP;
        RETURN NULL;
    ELSE
        NULL;
    END CASE;
    IF opt.enum IS NOT NULL THEN
        IF NOT lower(v) = ANY (SELECT lower(e) FROM unnest(opt.enum) e) THEN
            RETURN 'is not one of ' || array_to_string(opt.enum, ', ');
        END IF;
        RETURN NULL;
    END IF;
    IF opt.name IN ('context', 'subscribe_context', 'message_context', 'overlap_context') THEN
        IF v !~ '^[A-Za-z0-9_][A-Za-z0-9_.+-]*$' THEN
            RETURN 'is not a context name (letters, digits, _ . + -)';
        END IF;
        IF fenced AND (lower(v) LIKE 'pbx-%' OR EXISTS (SELECT 1 FROM pbx.reserved_contexts r WHERE lower(r.name) = lower(v))) THEN
            RETURN 'names a context of the node''s own dialplan or one the project reserves (pbx-*)';
        END IF;
        RETURN NULL;
    END IF;
    IF opt.name = 'transport' THEN
        IF fenced AND NOT EXISTS (SELECT 1 FROM pbx.transports t WHERE t.name = v) THEN
            RETURN 'names no transport of the nodes (pbx.transports)';
        END IF;
        RETURN NULL;
    END IF;
    IF opt.name IN ('contact', 'server_uri', 'client_uri', 'outbound_proxy') THEN
        IF NOT pbx.is_sip_uri(btrim(v)) THEN
            RETURN 'is not a SIP URI (sip:[user@]host[:port][;params])';
        END IF;
        RETURN NULL;
    END IF;
    IF opt.name = 'match' THEN
        -- A host name resolves to whatever its DNS says, outside the overlap check: an operator's
        -- plan may allow them (unfenced), a tenant's matches are addresses and networks.
        FOREACH tok IN ARRAY string_to_array(v, ',') LOOP
            IF NOT pbx.is_inet(btrim(tok)) AND (fenced OR NOT pbx.is_domain(btrim(tok))) THEN
                RETURN 'is not an IP address or network (host names would escape the overlap check)';
            END IF;
        END LOOP;
        RETURN NULL;
    END IF;
    IF opt.name IN ('permit', 'deny', 'contact_permit', 'contact_deny') THEN
        FOREACH tok IN ARRAY string_to_array(v, ',') LOOP
            tok := ltrim(btrim(tok), '!');
            IF NOT pbx.is_inet(split_part(tok, '/', 1))
               OR (position('/' IN tok) > 0 AND split_part(tok, '/', 2) !~ '^([0-9]{1,3}|[0-9]{1,3}(\.[0-9]{1,3}){3})$') THEN
                RETURN 'is not an address or network (a.b.c.d[/mask])';
            END IF;
        END LOOP;
        RETURN NULL;
    END IF;
    IF opt.name IN ('acl', 'contact_acl', 'language', 'tone_zone', 'moh_suggest', 'record_on_feature',
                    'record_off_feature', 'named_call_group', 'named_pickup_group') THEN
        IF v !~ '^[A-Za-z0-9_.,-]+$' THEN
            RETURN 'is not a name (letters, digits, _ . , -)';
        END IF;
        RETURN NULL;
    END IF;
    IF opt.name = 'from_domain' AND NOT pbx.is_domain(v) THEN
        RETURN 'is not a domain name';
    END IF;
    IF opt.name IN ('from_user', 'contact_user') AND v !~ '^[A-Za-z0-9_.!~*''()&=+$,;?/%#-]+$' THEN
        RETURN 'is not a SIP user part';
    END IF;
    IF opt.name = 'username' AND sec = 'auth' AND v ~ '[[:space:]":]' THEN
        RETURN 'contains a space, quote or colon (the digest is made of username:realm:password)';
    END IF;
    RETURN NULL;
END $$;

CREATE OR REPLACE FUNCTION pbx.validate_option() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    opt     pbx.pjsip_options;
    obj     pbx.objects;
    policy  pbx.option_policy;
    label   text;
    item    text;
    problem text;
    -- Never quoted in a refusal.
    secret  boolean := NEW.option IN ('password', 'md5_cred', 'oauth_secret', 'refresh_token', 'password_digest');
BEGIN
    SELECT * INTO obj FROM pbx.objects WHERE id = NEW.object_id;
    IF NOT FOUND THEN
        RETURN NEW;  -- not this role's object, or none: row-level security or the foreign key refuses
    END IF;
    label := pbx.object_label(obj.id);
    SELECT * INTO opt FROM pbx.pjsip_options
    WHERE section = pbx.catalog_section(NEW.section) AND name = NEW.option;
    IF NOT FOUND THEN
        RAISE EXCEPTION '%: unknown % option % (rule: option names must be Asterisk 22 PJSIP % options)',
            label, NEW.section, pbx.shown(NEW.option), pbx.catalog_section(NEW.section) USING ERRCODE = 'check_violation';
    END IF;
    IF NOT opt.settable THEN
        RAISE EXCEPTION '%: % option ''%'' is a link the project generates (rule: links cannot be set)',
            label, NEW.section, NEW.option USING ERRCODE = 'check_violation';
    END IF;
    IF NOT opt.realtime THEN
        RAISE EXCEPTION '%: % option ''%'' has no column in Asterisk 22''s realtime schema (rule: only options realtime Sorcery can read are accepted)',
            label, NEW.section, NEW.option USING ERRCODE = 'check_violation';
    END IF;
    policy := pbx.option_policy_of(obj.tenant_id, NEW.section, NEW.option);
    IF policy.forced IS NOT NULL THEN
        RAISE EXCEPTION '%: % option ''%'' is set for this tenant by the operator (rule: operator policy, plan %: forced)',
            label, NEW.section, NEW.option, policy.plan USING ERRCODE = 'check_violation';
    END IF;
    IF policy.allowed IS FALSE THEN
        RAISE EXCEPTION '%: % option ''%'' is not allowed for this tenant (rule: operator policy, plan %: %)',
            label, NEW.section, NEW.option, policy.plan, coalesce(policy.why, 'denied') USING ERRCODE = 'check_violation';
    END IF;
    IF cardinality(NEW.value) = 0 THEN
        RAISE EXCEPTION '%: % option ''%'' has no value (rule: an option needs a value)',
            label, NEW.section, NEW.option USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.section = 'auth' AND NEW.option = 'password' THEN
        IF obj.kind <> 'endpoint' THEN
            RAISE EXCEPTION '%: auth option ''password'' on a template (rule: an inbound password belongs to one endpoint: it is stored only as a digest of that endpoint''s username:realm:password)',
                label USING ERRCODE = 'check_violation';
        END IF;
        IF pbx.is_password_digest(NEW.value) THEN
            RETURN NEW;
        END IF;
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
        problem := pbx.value_problem(opt, NEW.section, item, NOT coalesce(policy.unfenced, false));
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION '%: % option ''%''% % (rule: values Asterisk would reject, and fenced values, are refused)',
                label, NEW.section, NEW.option, CASE WHEN secret THEN '' ELSE ' = ' || pbx.shown(item) END, problem
                USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    RETURN NEW;
END $$;

-- A policy row names a settable option, and a forced value is one Asterisk would take.
CREATE FUNCTION pbx.validate_policy() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    opt pbx.pjsip_options;
    item text;
    problem text;
BEGIN
    SELECT * INTO opt FROM pbx.pjsip_options
    WHERE section = pbx.catalog_section(NEW.section) AND name = NEW.option AND settable AND realtime;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'policy %: % option % is not a settable Asterisk 22 option (rule: policies name options tenants could set)',
            NEW.plan, NEW.section, pbx.shown(NEW.option) USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.forced IS NULL THEN
        RETURN NEW;
    END IF;
    IF NEW.section = 'auth' AND NEW.option IN ('password', 'username') THEN
        RAISE EXCEPTION 'policy %: auth option ''%'' cannot be forced (rule: inbound credentials are per endpoint)',
            NEW.plan, NEW.option USING ERRCODE = 'check_violation';
    END IF;
    IF cardinality(NEW.forced) = 0 OR (cardinality(NEW.forced) > 1 AND NOT opt.multi) THEN
        RAISE EXCEPTION 'policy %: % option ''%'' forced to % values (rule: one value, or a list for a multi-valued option)',
            NEW.plan, NEW.section, NEW.option, cardinality(NEW.forced) USING ERRCODE = 'check_violation';
    END IF;
    FOREACH item IN ARRAY NEW.forced LOOP
        problem := coalesce(pbx.value_problem(opt, NEW.section, item, false), CASE WHEN item IS NULL THEN 'is null' END);
        IF problem IS NOT NULL THEN
            RAISE EXCEPTION 'policy %: % option ''%'' forced to % % (rule: values Asterisk would reject are refused)',
                NEW.plan, NEW.section, NEW.option, pbx.shown(item), problem USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    RETURN NEW;
END $$;

CREATE TRIGGER validate_policy BEFORE INSERT OR UPDATE ON pbx.option_policy
    FOR EACH ROW EXECUTE FUNCTION pbx.validate_policy();

-- The transport key of templates and endpoints (pbx.objects.transport).
CREATE FUNCTION pbx.validate_object_transport() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    policy pbx.option_policy;
BEGIN
    IF NEW.transport IS NOT NULL AND NOT EXISTS (SELECT 1 FROM pbx.transports WHERE name = NEW.transport) THEN
        policy := pbx.option_policy_of(NEW.tenant_id, 'endpoint', 'transport');
        IF NOT coalesce(policy.unfenced, false) THEN
            RAISE EXCEPTION '% %/%: transport % names no transport of the nodes (rule: transports are the ones listed in pbx.transports)',
                NEW.kind, (SELECT name FROM pbx.tenants WHERE id = NEW.tenant_id), NEW.name, pbx.shown(NEW.transport)
                USING ERRCODE = 'check_violation';
        END IF;
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER validate_object_transport BEFORE INSERT OR UPDATE OF transport ON pbx.objects
    FOR EACH ROW EXECUTE FUNCTION pbx.validate_object_transport();

-- Extension texts reach SIP headers (the name is the From display name): one line, bounded.
CREATE FUNCTION pbx.validate_extension_text() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    label text := 'extension ' || coalesce((SELECT name FROM pbx.tenants WHERE id = NEW.tenant_id), '?') || '/' || NEW.number;
    col text;
    v text;
BEGIN
    FOREACH col IN ARRAY ARRAY['name', 'short_name', 'outgoing_name', 'outgoing_number', 'ringback', 'language'] LOOP
        v := to_jsonb(NEW) ->> col;
        CONTINUE WHEN v IS NULL;
        IF v ~ '[\x01-\x1f\x7f-\x9f]' THEN
            RAISE EXCEPTION '%: % contains a control character or line break (rule: texts that reach SIP headers are one line)',
                label, col USING ERRCODE = 'check_violation';
        END IF;
        IF length(v) > 80 THEN
            RAISE EXCEPTION '%: % is longer than 80 characters (rule: values Asterisk would reject are refused)',
                label, col USING ERRCODE = 'check_violation';
        END IF;
    END LOOP;
    IF NEW.outgoing_number IS NOT NULL AND NEW.outgoing_number !~ '^[0-9A-Za-z*#+]{1,40}$' THEN
        RAISE EXCEPTION '%: outgoing_number % is not a number (rule: [0-9A-Za-z*#+], at most 40)',
            label, pbx.shown(NEW.outgoing_number) USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.ringback IS NOT NULL AND NEW.ringback !~ '^[A-Za-z0-9_.-]+$' THEN
        RAISE EXCEPTION '%: ringback % is not a tone or sound name (rule: letters, digits, _ . -)',
            label, pbx.shown(NEW.ringback) USING ERRCODE = 'check_violation';
    END IF;
    IF NEW.language IS NOT NULL AND NEW.language !~ '^[A-Za-z0-9_-]+$' THEN
        RAISE EXCEPTION '%: language % is not a language code (rule: letters, digits, _ -)',
            label, pbx.shown(NEW.language) USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER validate_extension_text BEFORE INSERT OR UPDATE ON pbx.extensions
    FOR EACH ROW EXECUTE FUNCTION pbx.validate_extension_text();

-- ---------------------------------------------------------------------------------------------
-- Domains and aliases: unique across tenants, compared case-insensitively. One table holds every
-- name a tenant answers to; its primary key is the cross-table unique index (a concurrent second
-- claim waits for the first and then fails).

CREATE TABLE pbx.domain_names (
    name       text PRIMARY KEY,   -- lower(domain or alias)
    tenant_id  bigint NOT NULL REFERENCES pbx.tenants ON DELETE CASCADE,
    is_alias   boolean NOT NULL
);
CREATE INDEX domain_names_tenant ON pbx.domain_names (tenant_id);
INSERT INTO pbx.domain_names SELECT lower(domain), id, false FROM pbx.tenants ON CONFLICT DO NOTHING;
INSERT INTO pbx.domain_names SELECT lower(alias), tenant_id, true FROM pbx.domain_aliases ON CONFLICT DO NOTHING;

CREATE FUNCTION pbx.claim_domain_name(tenant bigint, tenant_name text, v text, alias boolean) RETURNS void
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    INSERT INTO pbx.domain_names (name, tenant_id, is_alias) VALUES (lower(v), tenant, alias);
EXCEPTION WHEN unique_violation THEN
    RAISE EXCEPTION 'tenant %: % % is already claimed as a domain or alias (rule: domains and aliases are unique across tenants, compared case-insensitively)',
        tenant_name, CASE WHEN alias THEN 'alias' ELSE 'domain' END, pbx.shown(v) USING ERRCODE = 'unique_violation';
END $$;

CREATE FUNCTION pbx.track_tenant_domain() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    IF TG_OP = 'UPDATE' THEN
        IF NEW.domain IS NOT DISTINCT FROM OLD.domain THEN
            RETURN NEW;
        END IF;
        DELETE FROM pbx.domain_names WHERE tenant_id = OLD.id AND NOT is_alias;
    END IF;
    PERFORM pbx.claim_domain_name(NEW.id, NEW.name, NEW.domain, false);
    RETURN NEW;
END $$;

CREATE TRIGGER track_tenant_domain AFTER INSERT OR UPDATE OF domain ON pbx.tenants
    FOR EACH ROW EXECUTE FUNCTION pbx.track_tenant_domain();

CREATE FUNCTION pbx.track_domain_alias() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM pbx.domain_names WHERE name = lower(OLD.alias) AND tenant_id = OLD.tenant_id AND is_alias;
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        PERFORM pbx.claim_domain_name(NEW.tenant_id, (SELECT name FROM pbx.tenants WHERE id = NEW.tenant_id), NEW.alias, true);
        RETURN NEW;
    END IF;
    RETURN OLD;
END $$;

CREATE TRIGGER track_domain_alias AFTER INSERT OR UPDATE OR DELETE ON pbx.domain_aliases
    FOR EACH ROW EXECUTE FUNCTION pbx.track_domain_alias();

-- A domain beyond the btree's row limit ended in an internal error before the checks: check first.
CREATE FUNCTION pbx.check_domain_length() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    v text := CASE TG_TABLE_NAME WHEN 'tenants' THEN to_jsonb(NEW) ->> 'domain' ELSE to_jsonb(NEW) ->> 'alias' END;
BEGIN
    IF NOT pbx.is_domain(v) THEN
        RAISE EXCEPTION '%: % is not a domain name (rule: labels of letters, digits and -, at most 63 each, 253 in all)',
            CASE TG_TABLE_NAME WHEN 'tenants' THEN 'tenant ' || pbx.shown(to_jsonb(NEW) ->> 'name') ELSE 'domain alias' END,
            pbx.shown(v) USING ERRCODE = 'check_violation';
    END IF;
    RETURN NEW;
END $$;

CREATE TRIGGER check_domain_length BEFORE INSERT OR UPDATE OF domain ON pbx.tenants
    FOR EACH ROW EXECUTE FUNCTION pbx.check_domain_length();
CREATE TRIGGER check_domain_length BEFORE INSERT OR UPDATE ON pbx.domain_aliases
    FOR EACH ROW EXECUTE FUNCTION pbx.check_domain_length();

-- ---------------------------------------------------------------------------------------------
-- Identify matches: no two endpoints (of any tenant) may match overlapping addresses, or a tenant
-- receives another's carrier calls. Checked on what Asterisk reads (the flattened rows), since
-- matches are inherited and unioned; the exclusion constraint keeps it true under concurrency.

CREATE EXTENSION IF NOT EXISTS btree_gist;

CREATE TABLE pbx.identify_networks (
    id   text NOT NULL,   -- the ps_endpoint_id_ips row
    net  inet NOT NULL,
    CONSTRAINT identify_match_overlap EXCLUDE USING gist (net inet_ops WITH &&, id WITH <>)
);
CREATE INDEX identify_networks_id ON pbx.identify_networks (id);

-- The networks of a flattened match column (realtime-encoded: ';' between values, ',' lists).
CREATE FUNCTION pbx.match_networks(col text) RETURNS SETOF inet
LANGUAGE sql IMMUTABLE AS $$
    SELECT DISTINCT network(btrim(t)::inet)::inet
    FROM unnest(string_to_array(col, ';')) AS v,
         unnest(string_to_array(replace(replace(v, '^3B', ';'), '^5E', '^'), ',')) AS t
    WHERE pbx.is_inet(btrim(t))
$$;

-- The endpoint of a flattened row id (N@D).
CREATE FUNCTION pbx.endpoint_of_row(rid text) RETURNS pbx.objects
LANGUAGE sql STABLE AS $$
    SELECT o.* FROM pbx.objects o JOIN pbx.tenants t ON t.id = o.tenant_id
    WHERE o.kind = 'endpoint' AND o.name = split_part(rid, '@', 1) AND t.domain = split_part(rid, '@', 2)
$$;

CREATE FUNCTION pbx.track_identify_networks() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    mine   inet;
    other  record;
    me     pbx.objects;
    them   pbx.objects;
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        DELETE FROM pbx.identify_networks WHERE id = OLD.id;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;
    IF NEW.id LIKE '~%' THEN
        RETURN NEW;  -- 009's row that keeps the identify cache filled
    END IF;
    FOR mine IN SELECT pbx.match_networks(NEW.match) LOOP
        SELECT n.id, n.net INTO other FROM pbx.identify_networks n WHERE n.net && mine AND n.id <> NEW.id LIMIT 1;
        IF FOUND THEN
            me := pbx.endpoint_of_row(NEW.id);
            them := pbx.endpoint_of_row(other.id);
            -- Another tenant's endpoint is not named to a tenant admin.
            RAISE EXCEPTION '%: identify match % overlaps % of % (rule: an identify match may not overlap another endpoint''s, in any tenant)',
                pbx.object_label(me.id), host(mine) || '/' || masklen(mine), host(other.net) || '/' || masklen(other.net),
                CASE WHEN them.tenant_id = me.tenant_id THEN pbx.object_label(them.id) ELSE 'an endpoint of another tenant' END
                USING ERRCODE = 'exclusion_violation';
        END IF;
        INSERT INTO pbx.identify_networks (id, net) VALUES (NEW.id, mine);
    END LOOP;
    RETURN NEW;
END $$;

CREATE TRIGGER track_identify_networks AFTER INSERT OR UPDATE OR DELETE ON pbx.rt_ps_endpoint_id_ips
    FOR EACH ROW EXECUTE FUNCTION pbx.track_identify_networks();

-- ---------------------------------------------------------------------------------------------
-- Inbound passwords. A plaintext `auth` password lives only inside the transaction that writes it:
-- at its end (before the flush), it becomes {md5:<md5(username:realm:password)>, username, realm},
-- the username being the endpoint's effective auth username and the realm its tenant's domain.
-- Asterisk reads auth_type md5, md5_cred and realm (the realm it challenges with, per auth object);
-- the password column stays NULL. The digest only holds for the username and realm it was made
-- with, so those two are kept with it and are what Asterisk gets: after a plain-SQL rename of the
-- endpoint or its tenant's domain, the phone's credentials keep working unchanged until the
-- password is set again (`pbxctl apply` sets it on every run: the file holds it).

CREATE FUNCTION pbx.is_password_digest(v text[]) RETURNS boolean
LANGUAGE sql IMMUTABLE AS $$
    SELECT cardinality(v) = 3 AND v[1] ~ '^md5:[0-9a-f]{32}$' AND v[2] IS NOT NULL AND v[3] IS NOT NULL
$$;

-- The stored form of an inbound password (also what `pbxctl apply` compares a file's password with).
CREATE FUNCTION pbx.password_digest(username text, realm text, password text) RETURNS text[]
LANGUAGE sql IMMUTABLE STRICT AS $$
    SELECT ARRAY['md5:' || md5(username || ':' || realm || ':' || password), username, realm]
$$;

CREATE FUNCTION pbx.digest_passwords() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pbx, pg_temp AS $$
DECLARE
    me xid8 := pg_current_xact_id();
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pbx.pending_flush WHERE xid = me) THEN
        RETURN NULL;  -- flushed already
    END IF;
    -- A plaintext password was just written, so its endpoint is dirty in this transaction. One
    -- statement for all of them: a row-by-row loop fires the tables' statement triggers once per
    -- endpoint, which made a 3,000-endpoint apply quadratic (minutes).
    WITH eps AS (
        SELECT o.id, o.name, t.domain
        FROM (SELECT DISTINCT object_id FROM pbx.dirty_objects WHERE xid = me) d
        JOIN pbx.objects o ON o.id = d.object_id AND o.kind = 'endpoint'
        JOIN pbx.tenants t ON t.id = o.tenant_id
        JOIN pbx.object_options x ON x.object_id = o.id AND x.section = 'auth' AND x.option = 'password'
        WHERE NOT pbx.is_password_digest(x.value)
    ), usernames AS (
        -- The auth username after inheritance: the deepest level of the linearization that sets it.
        SELECT DISTINCT ON (l.root) l.root, u.value[1] AS username
        FROM pbx.linearize_set(ARRAY(SELECT id FROM eps)) l
        JOIN pbx.object_options u ON u.object_id = l.node AND u.section = 'auth' AND u.option = 'username'
        ORDER BY l.root, l.lvl DESC
    )
    UPDATE pbx.object_options x
    SET value = pbx.password_digest(coalesce(n.username, e.name), e.domain, x.value[1])
    FROM eps e LEFT JOIN usernames n ON n.root = e.id
    WHERE x.object_id = e.id AND x.section = 'auth' AND x.option = 'password';
    RETURN NULL;
END $$;

-- Deferred like the flush and queued by the same pending_flush row: constraint triggers on one
-- event fire in name order, so `digest_passwords` runs before `flush_dirty`.
CREATE CONSTRAINT TRIGGER digest_passwords AFTER INSERT ON pbx.pending_flush
    DEFERRABLE INITIALLY DEFERRED FOR EACH ROW EXECUTE FUNCTION pbx.digest_passwords();

-- Rule R's rows of 004, with the inbound auth row carrying the digest (auth_type md5, md5_cred,
-- realm, and never a password) and the operator's forced options over what rule R resolved.
CREATE OR REPLACE FUNCTION pbx.endpoint_rows_set(objs bigint[])
RETURNS TABLE (object_id bigint, table_key text, id text, data jsonb)
LANGUAGE sql STABLE AS $$
    WITH r0 AS (
        SELECT x.object_id, x.merged AS m, o.name, o.name || '@' || t.domain AS eid, t.id AS tenant_id, t.plan
        FROM pbx.resolve_set(objs) x
        JOIN pbx.objects o ON o.id = x.object_id
        JOIN pbx.tenants t ON t.id = o.tenant_id
    ), forced AS (
        -- Per plan and section: the plan's own row of an option beats plan default's.
        SELECT pl.plan, p.section, jsonb_object_agg(p.option, pbx.realtime_encode(p.forced)) AS opts
        FROM (SELECT DISTINCT plan FROM r0) pl
        CROSS JOIN LATERAL (
            SELECT DISTINCT ON (q.section, q.option) q.section, q.option, q.forced
            FROM pbx.option_policy q WHERE q.plan IN (pl.plan, 'default')
            ORDER BY q.section, q.option, q.plan = pl.plan DESC
        ) p
        WHERE p.forced IS NOT NULL
        GROUP BY pl.plan, p.section
    ), r AS (
        SELECT r0.object_id, r0.name, r0.eid,
               (SELECT coalesce(jsonb_object_agg(sec.key, CASE WHEN f.opts IS NULL THEN sec.value ELSE sec.value || f.opts END), '{}')
                FROM jsonb_each(r0.m) sec LEFT JOIN forced f ON f.plan = r0.plan AND f.section = sec.key
                WHERE jsonb_typeof(sec.value) = 'object')
               || coalesce(jsonb_build_object('transport', r0.m -> 'transport'), '{}')
               || coalesce((SELECT jsonb_build_object('endpoint', f.opts) FROM forced f
                            WHERE f.plan = r0.plan AND f.section = 'endpoint' AND NOT r0.m ? 'endpoint'), '{}') AS m
        FROM r0
    )
    SELECT object_id, 'ps_endpoints', eid,
           coalesce(m -> 'endpoint', '{}') || jsonb_strip_nulls(jsonb_build_object(
               'id', eid, 'transport', m ->> 'transport',
               'aors', CASE WHEN m ? 'aor' THEN eid END,
               'auth', CASE WHEN m ? 'auth' THEN eid END,
               'outbound_auth', CASE WHEN m ? 'outbound_auth' THEN eid || '~out' END))
    FROM r
    UNION ALL
    SELECT object_id, 'ps_aors', eid, (m -> 'aor') || jsonb_build_object('id', eid)
    FROM r WHERE m ? 'aor'
    UNION ALL
    SELECT object_id, 'ps_auths', eid,
           jsonb_build_object('username', pbx.realtime_escape(name)) || ((m -> 'auth') - 'password')
           || CASE WHEN m -> 'auth' ->> 'password' LIKE 'md5:%' THEN jsonb_build_object(
                  'auth_type', 'md5',
                  -- realtime-encoded {md5:<hex>, username, realm}: 'md5:<hex>;<username>;<realm>'
                  'md5_cred', substr(split_part(m -> 'auth' ->> 'password', ';', 1), 5),
                  'username', split_part(m -> 'auth' ->> 'password', ';', 2),
                  'realm', split_part(m -> 'auth' ->> 'password', ';', 3))
              ELSE '{}' END
           || jsonb_build_object('id', eid)
    FROM r WHERE m ? 'auth'
    UNION ALL
    SELECT object_id, 'ps_auths:outbound_auth', eid || '~out',
           jsonb_build_object('username', pbx.realtime_escape(name)) || (m -> 'outbound_auth')
           || jsonb_build_object('id', eid || '~out')
    FROM r WHERE m ? 'outbound_auth'
    UNION ALL
    SELECT object_id, 'ps_endpoint_id_ips', eid, (m -> 'identify') || jsonb_build_object('id', eid, 'endpoint', eid)
    FROM r WHERE m ? 'identify'
    UNION ALL
    -- Every registration carries its endpoint, and Asterisk 22 refuses such a row at load unless
    -- `line` is on (the registration then silently never exists): on unless the file says otherwise.
    SELECT object_id, 'ps_registrations', eid,
           jsonb_strip_nulls(jsonb_build_object('transport', m ->> 'transport', 'line', 'yes'))
           || (m -> 'registration')
           || jsonb_strip_nulls(jsonb_build_object('id', eid, 'endpoint', eid,
                                                   'outbound_auth', CASE WHEN m ? 'outbound_auth' THEN eid || '~out' END))
    FROM r WHERE m ? 'registration'
$$;

-- ---------------------------------------------------------------------------------------------
-- Roles

-- routing_changed bumps any tenant's routing version: only the project's own triggers call it.
REVOKE EXECUTE ON FUNCTION pbx.routing_changed(bigint[]) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pbx.grant_tenant_admin(text, name) FROM PUBLIC;

-- A tenant admin sees its own grants only (pbx.is_admin_of reads them with the caller's rights).
ALTER TABLE pbx.tenant_admins ENABLE ROW LEVEL SECURITY;
CREATE POLICY own_grants ON pbx.tenant_admins TO pbx_tenant_admin USING (pg_has_role(role_name, 'MEMBER'));

-- A tenant admin may change its domain, not its name or plan (links_version: the cycle check).
REVOKE UPDATE ON pbx.tenants FROM pbx_tenant_admin;
GRANT UPDATE (domain, links_version) ON pbx.tenants TO pbx_tenant_admin;

GRANT SELECT ON pbx.codecs, pbx.transports, pbx.reserved_contexts, pbx.option_policy TO pbx_tenant_admin;
