"""The command line: ``tierpoint <command>`` (app.py parses, common.py holds the shared
options and error handling, tiers.py the tier commands, trust.py the trust tools, demo.py the
demo). The top floor: it may import every other part of the package; nothing imports it.
"""
from .app import main

__all__ = ["main"]
