import os
import sys

sys.path.insert(0, os.path.dirname(__file__))

from slurmcluster import slurm_cluster  # noqa: E402,F401  (the session fixture, shared)
from s3server import s3_env, s3_instance, s3_server  # noqa: E402,F401  (S3 servers)
