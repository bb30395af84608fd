-- COMPANY database: the company records of the COMPANY application.
-- Every table needs a PRIMARY KEY: row changes are journaled by key.
CREATE TABLE Company (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    mission    TEXT NOT NULL DEFAULT '',
    revenue    INTEGER,
    tax_id     TEXT NOT NULL DEFAULT '',
    created_at TEXT NOT NULL
);
CREATE INDEX Company_name ON Company(name);

-- Written by the HEARTBEAT production (see manifest.json), on the primary only.
CREATE TABLE Heartbeat (
    id     INTEGER PRIMARY KEY,
    member TEXT NOT NULL,
    at     TEXT NOT NULL
);
