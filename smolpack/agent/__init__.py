"""The guest agent's host side (run stage): protocol frames, sessions, the agent binary.

Spec: formats/agent-protocol.md. Only `protocol` and `session` are stdlib-only and safe for
the launcher stub; `binary` belongs to the build side. Import the submodules directly
(`from smolpack.agent import session`); nothing is imported here so the launcher's import
graph stays small.
"""
