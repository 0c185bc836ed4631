"""The reminder rules as plain functions: state rules, recurrence, message IDs. No database."""
