"""A host directory served to the guest kernel's FUSE client (run stage; issue 12).

`server.HostDir` answers the kernel's requests as the invoking user. Nothing is imported
here: the launcher imports `server` only for a run that mounts a host directory.
"""
