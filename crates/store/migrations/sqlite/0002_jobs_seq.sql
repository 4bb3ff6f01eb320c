-- Admission numbers jobs with MAX(seq) + 1 and the list pages by seq: both need seq indexed.
CREATE UNIQUE INDEX jobs_seq ON jobs(seq);
