"""Storage tiers behind one interface (base): the node-local POSIX tier (local) and the
capacity tier on POSIX pools as OCDBT parts (capacity), the same parts on an S3 bucket (s3,
its client s3store), what the POSIX two share (posix), found by a copy's recorded kind or
URL (registry); which saved ranks a directory holds (holdings), pure retention and
drain-scheduling rules (retention), the drain's transport (drain) and its scheduling (ops).
It imports format and runtime only.
"""
