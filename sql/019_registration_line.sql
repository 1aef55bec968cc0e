-- Every registration row carries its endpoint (a link the project generates, contract section 2),
-- and Asterisk 22 refuses such a registration at load unless `line` is on ("An endpoint has been
-- specified on outbound registration ... without enabling line support"): the registration then
-- silently never exists. So a registration with an endpoint has line support unless the file says
-- otherwise; with it, calls the carrier sends to the registered contact are matched to the trunk's
-- endpoint by the line parameter too.
CREATE OR REPLACE VIEW public.ps_registrations AS SELECT "id", "auth_rejection_permanent", "client_uri", "contact_user", "expiration", "max_retries", "outbound_auth", "outbound_proxy", "retry_interval", "forbidden_retry_interval", "server_uri", "transport", "support_path", "fatal_retry_interval", CASE WHEN "endpoint" IS NOT NULL THEN coalesce("line", 'yes') ELSE "line" END AS "line", "endpoint", "support_outbound", "contact_header_params", "max_random_initial_delay", "security_negotiation", "security_mechanisms", "user_agent" FROM pbx.rt_ps_registrations;
