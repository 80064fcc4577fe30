-- What the relay service adds: request nonces shared by every relay on the database, the clock of the
-- membership op each member row came from, and one notification per push instead of one per op.

-- Signed requests' nonces, kept for twice the accepted clock skew: a request replayed to any relay process on
-- this database is refused. Only the owner reads or writes them.
CREATE TABLE relay_nonces (
    device_key bytea NOT NULL CHECK (length(device_key) = 32),
    nonce      bytea NOT NULL CHECK (length(nonce) = 16),
    at_ms      bigint NOT NULL,
    PRIMARY KEY (device_key, nonce)
);
CREATE INDEX relay_nonces_at ON relay_nonces (at_ms);
REVOKE ALL ON relay_nonces FROM PUBLIC;

-- The membership op (hlc, id) a member's row was last set from: a later op wins, an older one pushed late
-- (or pushed again) changes nothing. Kept after a removal, so an old grant cannot bring a member back.
CREATE TABLE relay_member_clock (
    scope_id bytea NOT NULL REFERENCES relay_scopes,
    user_key bytea NOT NULL CHECK (length(user_key) = 32),
    hlc      bigint NOT NULL,
    op_id    bytea NOT NULL CHECK (length(op_id) = 32),
    PRIMARY KEY (scope_id, user_key)
);
REVOKE ALL ON relay_member_clock FROM PUBLIC;

-- One notification per push and scope (its highest seq), not one per op: a batch of 500 wakes the listener once.
DROP TRIGGER relay_ops_notify ON relay_ops;
DROP FUNCTION relay_notify_op();
CREATE FUNCTION relay_notify_push() RETURNS trigger LANGUAGE plpgsql AS $$
DECLARE
    pushed record;
BEGIN
    FOR pushed IN SELECT scope_id, max(seq) AS seq FROM new_ops GROUP BY scope_id LOOP
        PERFORM pg_notify('relay_ops', encode(pushed.scope_id, 'hex') || ':' || pushed.seq);
    END LOOP;
    RETURN NULL;
END $$;
CREATE TRIGGER relay_ops_notify AFTER INSERT ON relay_ops REFERENCING NEW TABLE AS new_ops
    FOR EACH STATEMENT EXECUTE FUNCTION relay_notify_push();

-- The policies of 0001 call relay_is_member once per row (a SECURITY DEFINER function is never inlined), and
-- a pull's filter ran before its LIMIT: a page cost the whole rest of the scope. The same rules, asked once
-- per statement: the scopes where the calling role holds at least a role, as an uncorrelated subquery.
CREATE FUNCTION relay_scopes_of(p_role name, p_least text) RETURNS SETOF bytea
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
    SELECT m.scope_id FROM public.relay_members m JOIN public.relay_users u ON u.user_key = m.user_key
    WHERE u.role_name = p_role
      AND (p_least = 'reader' OR m.role IN ('writer', 'admin') AND p_least = 'writer'
           OR m.role = 'admin' AND p_least = 'admin')
$$;
REVOKE ALL ON FUNCTION relay_scopes_of(name, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION relay_scopes_of(name, text) TO relay_user;

DROP POLICY ops_read ON relay_ops;
DROP POLICY ops_write ON relay_ops;
DROP POLICY scopes_read ON relay_scopes;
DROP POLICY scopes_advance ON relay_scopes;
DROP POLICY members_read ON relay_members;
CREATE POLICY ops_read ON relay_ops FOR SELECT
    USING (scope_id IN (SELECT relay_scopes_of(current_user, 'reader')));
CREATE POLICY ops_write ON relay_ops FOR INSERT
    WITH CHECK (scope_id IN (SELECT relay_scopes_of(current_user, 'writer')) AND pushed_by = current_user);
CREATE POLICY scopes_read ON relay_scopes FOR SELECT
    USING (scope_id IN (SELECT relay_scopes_of(current_user, 'reader')));
CREATE POLICY scopes_advance ON relay_scopes FOR UPDATE
    USING (scope_id IN (SELECT relay_scopes_of(current_user, 'writer')))
    WITH CHECK (scope_id IN (SELECT relay_scopes_of(current_user, 'writer')));
CREATE POLICY members_read ON relay_members FOR SELECT
    USING (scope_id IN (SELECT relay_scopes_of(current_user, 'reader')));

-- The foreign key from each op to its scope cost a locking lookup per inserted row (most of a push's time).
-- The write policy already requires the pusher to be a writer of the scope, and a member row references the
-- scope, so an op of an unknown scope cannot be inserted by a user; scopes are never deleted.
ALTER TABLE relay_ops DROP CONSTRAINT relay_ops_scope_id_fkey;
