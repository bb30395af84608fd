-- PERSONAL database: the personal contacts of the PHONEBOOK application.
-- company_id refers to Company.id in the COMPANY database. SQLite cannot enforce a foreign key
-- across database files, so the application checks it when a contact is written.
CREATE TABLE Contact (
    id         INTEGER PRIMARY KEY,
    name       TEXT NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    phone      TEXT NOT NULL DEFAULT '',
    company_id INTEGER NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX Contact_company ON Contact(company_id);
