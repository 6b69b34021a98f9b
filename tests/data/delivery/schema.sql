CREATE TABLE links (
    code text PRIMARY KEY,
    url text NOT NULL CHECK (url ~ '^https?://'),
    clicks bigint NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX links_created ON links (created_at);
