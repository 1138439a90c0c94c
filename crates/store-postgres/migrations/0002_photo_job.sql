-- store-sqlite's 0002_photo_job.sql: the queue id of a photo's processing
-- job, so that deleting the photo can cancel the job (NULL: none recorded,
-- as for every photo stored before). No foreign key: the queue may live in
-- another engine (a broker).
ALTER TABLE photos ADD COLUMN job_id BIGINT;
