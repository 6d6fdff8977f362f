"""A host directory served to the guest kernel's FUSE client (run stage; issue 12).

`server.HostDir` answers the kernel's requests as the invoking user; `fuse_wire` holds the
kernel's wire format, `node_table` the confinement (O_PATH fds reached one name at a time).
Nothing is imported here: the launcher loads these (through `host_resources`) only for a
run that attaches something from the host.
"""
