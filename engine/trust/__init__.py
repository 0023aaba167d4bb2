"""The trust tools: verify a checkpoint copy (verify), inspect and compare checkpoints
(inspect), lineage (lineage) and the append-only audit log (audit; on S3 s3audit; logs picks one). They read checkpoints
through the tier interface; they import format, runtime and tiers.
"""
