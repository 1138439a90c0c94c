-- The attempts a job had spent when it was last retried from the dead-letter
-- state: a delivery's attempt number is attempts - attempt_base (1 again
-- after a retry), while attempts itself only ever grows, so it stays the
-- fencing token of every delivery, those from before the job died included.
ALTER TABLE jobs ADD COLUMN attempt_base INTEGER NOT NULL DEFAULT 0;
