#!/bin/busybox sh
# L1's /init (tests/kvm_lane/l1.py): load kvm_amd, put a tmpfs overlay over the host's
# root tree (9p, read-only), run /command.sh in it, report on the l1.* virtio ports.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
for ko in /mods/*.ko; do insmod "$ko" || echo "l1: insmod $ko failed"; done
sleep 0.2  # virtio ports appear asynchronously after virtio_console loads
port() {  # the /dev node of the virtio-serial port named $1
    for n in /sys/class/virtio-ports/*/name; do
        [ "$(cat "$n")" = "$1" ] && { echo "/dev/$(basename "$(dirname "$n")")"; return; }
    done
}
STATUS=$(port l1.status)
fail() { echo "error: $*" > "$STATUS"; echo "l1: $*"; poweroff -f; }
[ -n "$STATUS" ] || { echo "l1: no l1.status port"; poweroff -f; }
[ -c /dev/kvm ] || fail "no /dev/kvm in L1 (kvm_amd did not load: does -cpu offer svm?)"
mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=512000,cache=loose host /host \
    || fail "cannot mount the host tree over 9p"
mount -t tmpfs -o size=90% tmpfs /upper
mkdir -p /upper/u /upper/w
mount -t overlay overlay -o lowerdir=/host,upperdir=/upper/u,workdir=/upper/w /newroot \
    || fail "cannot put an overlay over the host tree"
R=/newroot
mount -t proc proc $R/proc
mount -t sysfs sys $R/sys
mount -t devtmpfs dev $R/dev
mkdir -p $R/dev/pts $R/dev/shm
mount -t devpts devpts $R/dev/pts
mount -t tmpfs tmpfs $R/dev/shm
mount -t tmpfs tmpfs $R/tmp
mount -t tmpfs tmpfs $R/run
while read -r n dir; do  # host directories L1 writes through to (l1.py --share)
    mkdir -p "$R$dir"  # under /tmp it is not in the host tree L1 sees
    mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000 "share$n" "$R$dir" \
        || fail "cannot mount the shared directory $dir"
done < /shares
ip link set lo up
cp /command.sh $R/tmp/l1-command.sh
echo "l1: uptime $(cut -d' ' -f1 /proc/uptime) s, $(uname -r), running the command"
chroot $R /bin/sh /tmp/l1-command.sh < /dev/null > "$(port l1.stdout)" 2> "$(port l1.stderr)"
echo "rc=$? uptime=$(cut -d' ' -f1 /proc/uptime)s" > "$STATUS"
sync
poweroff -f
