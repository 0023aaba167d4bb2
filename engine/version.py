"""The release of tierpoint (recorded in every manifest)."""
__version__ = "0.1.0"
