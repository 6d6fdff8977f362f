#!/bin/sh
# Make a tiny root filesystem from the host's static busybox (Debian: busybox-static),
# so the examples need no network and no registry: examples/make-busybox-rootfs.sh DEST
set -eu
dest=${1:?usage: $0 DEST}
bb=$(command -v busybox || echo /bin/busybox)
if [ ! -x "$bb" ]; then
    echo "error: a static busybox is needed: apt-get install busybox-static" >&2; exit 4
fi
rm -rf "$dest.tmp" && mkdir -p "$dest.tmp"
for d in bin etc root tmp dev proc sys run; do mkdir -p "$dest.tmp/$d"; done
cp "$bb" "$dest.tmp/bin/busybox"
for applet in $("$bb" --list); do
    [ "$applet" = busybox ] || ln -sf busybox "$dest.tmp/bin/$applet"
done
echo "root:x:0:0:root:/root:/bin/sh" > "$dest.tmp/etc/passwd"
rm -rf "$dest" && mv "$dest.tmp" "$dest"
