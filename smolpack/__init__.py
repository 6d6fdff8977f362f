"""smolpack: pack a Linux microVM into one self-booting executable.

Kept import-free on purpose: the launcher stub imports `smolpack.payload`
and must not pull click, lief or the build side in through this file.
"""

__version__ = "0.1.0"
