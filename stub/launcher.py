"""Entry script of the launcher stub (frozen by PyInstaller: `smolpack stub build`).

Everything lives in `smolpack.launcher`; this file only calls it, so the same code runs
frozen and from a checkout (`python stub/launcher.py` needs a pack: see smolpack.launcher).
"""

from smolpack.launcher import main

main()
