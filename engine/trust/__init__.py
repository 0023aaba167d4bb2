"""The trust tools: verify a checkpoint copy (verify), inspect and compare checkpoints
(inspect), lineage (lineage) and the append-only audit log (audit; its object-store form
s3audit; logs opens either). They read checkpoints through the tier interface; they import
format, runtime and tiers.
"""
