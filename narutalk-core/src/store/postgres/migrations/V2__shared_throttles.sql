-- The throttles every server shares (contract section 10: a client spreading requests over
-- servers gets the limits of one): one token bucket per throttle and key, kept as the
-- instant it is full again (GCRA), taken from by one upsert. A row whose instant is past
-- means the same as no row; such rows are pruned now and then.

CREATE TABLE throttle_buckets (
    bucket  TEXT    NOT NULL,   -- the throttle: login_ip, register_email, messages, ...
    key     TEXT    NOT NULL,   -- whom it counts: an IP, a user id, a SHA-256 in hex
    full_at BIGINT  NOT NULL,   -- microseconds: when every token is back
    taken   BOOLEAN NOT NULL,   -- whether the last take got a token (what the upsert answers)
    PRIMARY KEY (bucket, key)
);
