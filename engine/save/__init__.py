"""The save path: state declaration -> pure save plan (plan) -> snapshot into host staging
memory (staging) -> chunk files (write) -> the background job that writes, agrees and commits
(job). It imports format, runtime and tiers; never restore or trust.
"""
