"""The small scheduler service: nodes, jobs, a priority + EASY-backfill dispatcher, REST."""
