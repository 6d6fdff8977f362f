/* Tiny PID 1 for tests/e2e/test_qemu_boot.py: proves the libkrunfw kernel boots under QEMU.
 *
 * Mounts devtmpfs and sysfs, prints a marker line and the name of every virtio-serial port
 * to /dev/hvc0, then ends the VM. Built with `musl-gcc -static` (or `gcc -static`).
 *
 * How the guest ends QEMU (microvm,acpi=off, measured with QEMU 7.2): reboot(RB_POWER_OFF)
 * only halts the CPUs -- with no ACPI there is no power-off device, QEMU keeps running.
 * reboot(RB_AUTOBOOT) resets the machine, and `-no-reboot` turns that reset into a clean
 * QEMU exit (status 0). Boot with `reboot=t` on the kernel command line, or the kernel spends
 * ~3 s trying ACPI/keyboard-controller resets before the triple fault. The root tree should
 * hold /dev: the kernel's devtmpfs automount fails without it (we mount it here anyway). */
#include <dirent.h>
#include <fcntl.h>
#include <stdio.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/reboot.h>
#include <sys/stat.h>
#include <unistd.h>

#ifndef REBOOT_MODE
#define REBOOT_MODE RB_AUTOBOOT
#endif

static void put(int fd, const char *s) { (void)!write(fd, s, strlen(s)); }

int main(void) {
    mkdir("/dev", 0755);
    mkdir("/sys", 0755);
    mount("devtmpfs", "/dev", "devtmpfs", 0, NULL); /* EBUSY if the kernel mounted it */
    mount("sysfs", "/sys", "sysfs", 0, NULL);
    int con = open("/dev/hvc0", O_WRONLY | O_NOCTTY);
    if (con < 0) con = 1;
    put(con, "SMOLPACK-BOOT-OK\n");
    DIR *d = opendir("/sys/class/virtio-ports");
    struct dirent *e;
    while (d && (e = readdir(d)) != NULL) {
        if (e->d_name[0] == '.') continue;
        char path[512], name[128] = {0};
        snprintf(path, sizeof path, "/sys/class/virtio-ports/%s/name", e->d_name);
        int fd = open(path, O_RDONLY);
        if (fd < 0) continue;
        ssize_t n = read(fd, name, sizeof name - 1);
        close(fd);
        if (n > 0 && name[n - 1] == '\n') name[n - 1] = 0;
        char line[700];
        snprintf(line, sizeof line, "PORT %s %s\n", e->d_name, name);
        put(con, line);
    }
    put(con, "SMOLPACK-BOOT-END\n");
    fsync(con);
    sync();
    reboot(REBOOT_MODE);
    for (;;) pause();
}
