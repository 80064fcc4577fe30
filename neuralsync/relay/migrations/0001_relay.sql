-- The relay's tables. The relay is untrusted by design (replicas verify every op themselves); these tables and
-- their policies make the database itself refuse what a member may not do, whatever the relay's code does.
--
-- Roles (created by the relay's owner role, which holds CREATEROLE):
--   the owner (runs migrations, keeps users/devices/members from verified membership ops);
--   one NOLOGIN role per user, which each request runs as (SET LOCAL ROLE): row-level security decides by it.

CREATE TABLE relay_users (
    user_key   bytea PRIMARY KEY CHECK (length(user_key) = 32),
    role_name  name NOT NULL UNIQUE,
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE relay_devices (
    device_key  bytea PRIMARY KEY CHECK (length(device_key) = 32),
    user_key    bytea NOT NULL REFERENCES relay_users,
    certificate bytea NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- One row per shared scope; last_seq is its gap-free cursor. A push locks the row (FOR UPDATE) for the rest
-- of its transaction, so pushes to one scope commit in the order of the numbers they took: a reader that
-- has seen seq n has seen every seq below n (a plain identity column would let a slow transaction commit
-- a lower number after a reader moved past it).
CREATE TABLE relay_scopes (
    scope_id   bytea PRIMARY KEY CHECK (length(scope_id) = 32),
    last_seq   bigint NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE relay_members (
    scope_id bytea NOT NULL REFERENCES relay_scopes,
    user_key bytea NOT NULL REFERENCES relay_users,
    role     text NOT NULL CHECK (role IN ('reader', 'writer', 'admin')),
    PRIMARY KEY (scope_id, user_key)
);

-- Append-only: keyed by (scope, op id), so an op pushed twice is stored once and an id squatted in one scope
-- never blocks the same id in another.
CREATE TABLE relay_ops (
    scope_id    bytea NOT NULL REFERENCES relay_scopes,
    op_id       bytea NOT NULL CHECK (length(op_id) = 32),
    seq         bigint NOT NULL CHECK (seq > 0),
    body        bytea NOT NULL,
    sig         bytea NOT NULL CHECK (length(sig) = 64),
    author      bytea NOT NULL CHECK (length(author) = 32),
    pushed_by   name NOT NULL DEFAULT current_user,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (scope_id, op_id),
    UNIQUE (scope_id, seq)
);

-- Is the calling user (current_user where the policy is evaluated) a member with at least this role?
-- SECURITY DEFINER so a policy can read the membership without granting it; search_path pinned.
CREATE FUNCTION relay_is_member(p_scope bytea, p_role name, p_least text) RETURNS boolean
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT EXISTS (
        SELECT 1 FROM public.relay_members m JOIN public.relay_users u ON u.user_key = m.user_key
        WHERE m.scope_id = p_scope AND u.role_name = p_role
          AND (p_least = 'reader' OR m.role IN ('writer', 'admin') AND p_least = 'writer'
               OR m.role = 'admin' AND p_least = 'admin'))
$$;
REVOKE ALL ON FUNCTION relay_is_member(bytea, name, text) FROM PUBLIC;

ALTER TABLE relay_ops ENABLE ROW LEVEL SECURITY;
ALTER TABLE relay_scopes ENABLE ROW LEVEL SECURITY;
ALTER TABLE relay_members ENABLE ROW LEVEL SECURITY;
ALTER TABLE relay_users ENABLE ROW LEVEL SECURITY;

CREATE POLICY ops_read ON relay_ops FOR SELECT USING (relay_is_member(scope_id, current_user, 'reader'));
CREATE POLICY ops_write ON relay_ops FOR INSERT
    WITH CHECK (relay_is_member(scope_id, current_user, 'writer') AND pushed_by = current_user);
CREATE POLICY scopes_read ON relay_scopes FOR SELECT USING (relay_is_member(scope_id, current_user, 'reader'));
CREATE POLICY scopes_advance ON relay_scopes FOR UPDATE
    USING (relay_is_member(scope_id, current_user, 'writer'))
    WITH CHECK (relay_is_member(scope_id, current_user, 'writer'));
CREATE POLICY members_read ON relay_members FOR SELECT USING (relay_is_member(scope_id, current_user, 'reader'));
CREATE POLICY users_self ON relay_users FOR SELECT USING (role_name = current_user);

-- What every user role may do; nobody but the owner may UPDATE or DELETE an op.
DO $$ BEGIN  -- roles are the cluster's, shared by every relay database in it
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'relay_user') THEN CREATE ROLE relay_user NOLOGIN; END IF;
END $$;
GRANT USAGE ON SCHEMA public TO relay_user;
REVOKE ALL ON relay_users, relay_devices, relay_scopes, relay_members, relay_ops FROM PUBLIC;
GRANT SELECT, INSERT ON relay_ops TO relay_user;
GRANT SELECT ON relay_scopes, relay_members, relay_users TO relay_user;
GRANT UPDATE (last_seq) ON relay_scopes TO relay_user;
GRANT EXECUTE ON FUNCTION relay_is_member(bytea, name, text) TO relay_user;

-- Live updates for the relay's own listener (clients never LISTEN: channels are not access-controlled; the
-- relay sends each event only to members, by reading it as the member).
CREATE FUNCTION relay_notify_op() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('relay_ops', encode(NEW.scope_id, 'hex') || ':' || NEW.seq);
    RETURN NULL;
END $$;
CREATE TRIGGER relay_ops_notify AFTER INSERT ON relay_ops FOR EACH ROW EXECUTE FUNCTION relay_notify_op();
