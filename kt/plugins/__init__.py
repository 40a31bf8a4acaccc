"""kt's built-in plugins: each uses only the public hooks in :mod:`kt.hookspecs`."""
