-- Bearer tokens of `pbxctl serve`'s HTTP API (http_api/tokens.py, `pbxctl token`).
-- A token is `pbx_<key_id>_<secret>`: key_id finds the row, the SHA-256 of the whole token is compared
-- in constant time with `hash`. Only the hash is stored: the token itself is printed once, at creation.
-- SHA-256, not a slow password hash: the secret is 256 random bits, so there is nothing to guess and no
-- dictionary to slow down, and every request is checked (a slow hash would cost each one ~100 ms of CPU).
-- tenant_id NULL = operator-wide. Deleting a tenant deletes its tokens: a tenant token must never
-- outlive its tenant (SET NULL would turn it into an operator token).
-- No grant: neither pbx_asterisk nor pbx_tenant_admin may read or mint tokens.
CREATE TABLE pbx.api_tokens (
    id          bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    name        text NOT NULL,
    key_id      text NOT NULL UNIQUE,
    hash        bytea NOT NULL,
    tenant_id   bigint REFERENCES pbx.tenants ON DELETE CASCADE,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    CONSTRAINT api_token_name_pattern CHECK (name ~ '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,62}$'),
    CONSTRAINT api_token_key_id_pattern CHECK (key_id ~ '^[0-9a-f]{16}$'),
    CONSTRAINT api_token_hash_is_sha256 CHECK (length(hash) = 32),
    CONSTRAINT api_token_expires_after_creation CHECK (expires_at IS NULL OR expires_at > created_at)
);

-- A name is reusable once its token is revoked (`pbxctl token revoke N` then `create --name N`).
CREATE UNIQUE INDEX api_tokens_active_name ON pbx.api_tokens (name) WHERE revoked_at IS NULL;
