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
