"""Hypervisor engines (run stage): QEMU (`qemu`) and libkrun (`krun`), behind `Engine`.

`engine.registry` names every engine and imports one only when asked for it; `select.plan_run`
asks each whether it can run a pack here and picks one; the runner then has that engine start
a `Vm`, and only needs what `Vm` declares: the connected agent channel, the console log, and
`close`. `smolpack create` has every engine that `--state` selects build and save its state
(`can_save_here`, `build_state`). Nothing is imported here (the interface is
`engine.interface`): the launcher's option parsing reads `engine.registry` and loads nothing
else, and a run loads only what the engine it picked needs.
"""
