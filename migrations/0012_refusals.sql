-- Requests refused for a limit (429), per API, consumer and UTC day: each counter writes its own
-- running count for the day, so the owner's report can show refusals beside usage.
CREATE TABLE refusals (
  api_id       TEXT NOT NULL,
  consumer_id  TEXT NOT NULL,
  day          TEXT NOT NULL,
  count        INTEGER NOT NULL,
  PRIMARY KEY (api_id, consumer_id, day)
);
