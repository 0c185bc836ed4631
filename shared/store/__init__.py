"""The database: engine and sessions, models, schema and migrations, and what writes rows
(planning reminders, accounts, housekeeping)."""
