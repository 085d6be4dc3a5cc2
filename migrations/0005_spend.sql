-- Spend that holds: the API's upstream rules and price table, money budgets on plans, and what each
-- usage record booked (cost, cached and reasoning tokens, how the request ended, overruns).
ALTER TABLE apis ADD COLUMN upstream_policy_json TEXT NOT NULL DEFAULT '{}';
ALTER TABLE apis ADD COLUMN prices_json TEXT NOT NULL DEFAULT '{}';

ALTER TABLE plans ADD COLUMN spend_per_day_micro INTEGER;
ALTER TABLE plans ADD COLUMN spend_per_month_micro INTEGER;

ALTER TABLE usage_records ADD COLUMN ended TEXT NOT NULL DEFAULT 'complete';
ALTER TABLE usage_records ADD COLUMN cached_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN reasoning_tokens INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN n INTEGER NOT NULL DEFAULT 1;
ALTER TABLE usage_records ADD COLUMN max_tokens INTEGER;
ALTER TABLE usage_records ADD COLUMN prompt_bound INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN cost_micro INTEGER NOT NULL DEFAULT 0;
ALTER TABLE usage_records ADD COLUMN overrun INTEGER NOT NULL DEFAULT 0;
