-- Knowledge-base validation gamification: per-user validation stats, badges
-- and leaderboard. Applied by hand in production on 2026-02-11 (see the
-- incident report); the migration runner wraps this file in a transaction.

CREATE TABLE IF NOT EXISTS user_validation_stats (
    user_id UUID PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    documents_validated INTEGER NOT NULL DEFAULT 0,
    points INTEGER NOT NULL DEFAULT 0,
    last_validation_at TIMESTAMPTZ DEFAULT NULL,
    created_at TIMESTAMPTZ DEFAULT NOW(),
    updated_at TIMESTAMPTZ DEFAULT NOW()
);

CREATE INDEX IF NOT EXISTS idx_user_validation_stats_points
    ON user_validation_stats (points DESC);
CREATE INDEX IF NOT EXISTS idx_user_validation_stats_documents
    ON user_validation_stats (documents_validated DESC);
CREATE INDEX IF NOT EXISTS idx_user_validation_stats_last_validation
    ON user_validation_stats (last_validation_at);

CREATE OR REPLACE FUNCTION get_user_badge(points INTEGER)
RETURNS TEXT
LANGUAGE sql
IMMUTABLE
AS $$
    SELECT CASE
        WHEN points >= 1000 THEN 'expert'
        WHEN points >= 500 THEN 'gold'
        WHEN points >= 200 THEN 'silver'
        WHEN points >= 50 THEN 'bronze'
        ELSE 'novice'
    END
$$;

CREATE OR REPLACE VIEW v_user_validation_badges AS
SELECT
    s.user_id,
    u.email,
    u.name,
    s.documents_validated,
    s.points,
    get_user_badge(s.points) AS badge,
    s.last_validation_at
FROM user_validation_stats s
JOIN users u ON u.id = s.user_id;

CREATE OR REPLACE FUNCTION get_user_leaderboard_position(p_user_id UUID)
RETURNS BIGINT
LANGUAGE sql
STABLE
AS $$
    SELECT ranked.position
    FROM (
        SELECT user_id,
               RANK() OVER (ORDER BY points DESC, documents_validated DESC) AS position
        FROM user_validation_stats
    ) AS ranked
    WHERE ranked.user_id = p_user_id
$$;

INSERT INTO user_validation_stats (user_id)
SELECT id FROM users
ON CONFLICT DO NOTHING;
