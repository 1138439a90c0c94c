-- The worker's reconciler looks for photos still processing without a
-- recorded job (uploads whose process died between the row and the job):
-- an index of those rows only, which are few.
CREATE INDEX photos_stalled ON photos (created_at) WHERE status = 'processing' AND job_id IS NULL;
