-- The database the app is configured for in the incident: created by a fresh
-- deployment, app tables present but empty; users and web_sources never created.
CREATE DATABASE qadhya OWNER moncabinet;
\connect qadhya
SET client_encoding = 'UTF8';
CREATE TABLE public.knowledge_base (
    id serial PRIMARY KEY,
    title text NOT NULL,
    category text NOT NULL,
    language text NOT NULL CHECK (language IN ('fr', 'ar')),
    content text NOT NULL,
    embedding real[],
    source_id integer,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.ai_usage_logs (
    id bigserial PRIMARY KEY,
    user_id uuid,
    tokens integer NOT NULL DEFAULT 0,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public._migrations (
    name text PRIMARY KEY,
    applied_at timestamptz DEFAULT now()
);
