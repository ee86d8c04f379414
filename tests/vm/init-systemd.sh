# Sourced by /init (init.sh) for the `@systemd` lines of tests.list: the
# guest's root becomes the host's root (the 9p share, read-only) under a
# tmpfs overlay, so `dpkg -i` and `systemctl enable` write into the guest
# only, and systemd runs as PID 1 on it. It boots `vmtest.target`, which
# holds nothing but `vmtest.service` (after sysinit.target and the D-Bus
# socket, which users' `systemctl` needs, as on any machine): the host's
# enabled services (multi-user.target: docker, containerd, the registry,
# postgresql ...; sockets.target and timers.target) are never pulled in.
# vmtest.service runs /.vm/run-systemd.sh: the tests, results on ttyS1 and
# the exit code through isa-debug-exit, as in the busybox mode.

R=/.vm/root
$B mkdir -p /.vm/rw "$R"
$B mount -t tmpfs -o mode=755 tmpfs /.vm/rw || die "tmpfs for the overlay"
$B mkdir -p /.vm/rw/upper /.vm/rw/work
$B mount -t overlay overlay -o lowerdir=/.vm/host,upperdir=/.vm/rw/upper,workdir=/.vm/rw/work "$R" \
	|| die "the overlay of the host's root"
# What systemd does not mount itself: a fresh /tmp (the host's would show
# through the overlay).
$B mount -t tmpfs -o mode=1777 tmpfs "$R/tmp" || die "tmpfs /tmp"

# The test runner and its inputs (the initramfs is gone after switch_root).
$B mkdir -p "$R/.vm"
for f in busybox tests.list env test-timeout run-tests.sh run-systemd.sh; do
	$B cp "/.vm/$f" "$R/.vm/$f" || die "copying $f"
done

# A guest, not the host's container: services may start (the host image's
# Docker-style policy-rc.d forbids it), and it has its own name.
$B rm -f "$R/usr/sbin/policy-rc.d"
# man-db's dpkg trigger rebuilds the whole manual index (mandb) whenever a
# package installs or removes a page: minutes under TCG, and nothing the
# tests read. Without this flag file the trigger does nothing (man-db's own
# switch, `man-db/auto-update`).
$B rm -f "$R/var/lib/man-db/auto-update"
echo vmtest > "$R/etc/hostname"

U="$R/etc/systemd/system"
$B mkdir -p "$U"
cat > "$U/vmtest.target" <<UNIT
[Unit]
Description=cilock kernel matrix: the tests, nothing else
Requires=vmtest.service
After=vmtest.service
AllowIsolate=yes
UNIT
cat > "$U/vmtest.service" <<UNIT
[Unit]
Description=cilock kernel matrix: run the @systemd tests
DefaultDependencies=no
Wants=sysinit.target dbus.socket
After=sysinit.target dbus.socket
FailureAction=poweroff-force

[Service]
Type=oneshot
ExecStart=/.vm/busybox sh /.vm/run-systemd.sh
StandardOutput=journal+console
StandardError=journal+console
UNIT
# Masked: what is slow under TCG or means nothing in this guest (device
# coldplug, hardware database, first-boot and persistence services, the
# host's enabled extras in sysinit.target.wants).
for u in \
	systemd-udevd.service systemd-udevd-control.socket systemd-udevd-kernel.socket \
	systemd-udev-trigger.service systemd-udev-settle.service systemd-hwdb-update.service \
	systemd-journal-catalog-update.service systemd-journal-flush.service ldconfig.service \
	systemd-update-done.service systemd-update-utmp.service systemd-firstboot.service \
	systemd-machine-id-commit.service systemd-random-seed.service systemd-binfmt.service \
	proc-sys-fs-binfmt_misc.automount systemd-modules-load.service kmod-static-nodes.service \
	systemd-repart.service systemd-pcrphase.service systemd-pcrphase-sysinit.service \
	systemd-sysusers.service systemd-tmpfiles-setup.service systemd-remount-fs.service \
	systemd-timesyncd.service systemd-pstore.service sys-kernel-config.mount \
	sys-fs-fuse-connections.mount dev-hugepages.mount dev-mqueue.mount \
	systemd-ask-password-console.path systemd-ask-password-wall.path \
	systemd-fsck-root.service e2scrub_reap.service apparmor.service; do
	$B ln -sf /dev/null "$U/$u"
done

# /proc, /sys and /dev go along; systemd mounts the rest (cgroup2, bpffs,
# tracefs, debugfs, /run, /dev/shm, /dev/pts).
for d in dev proc sys; do
	$B mount --move "/$d" "$R/$d" || die "moving /$d"
done
read -r up _ < "$R/proc/uptime"
log "switching to systemd at ${up}s: $($B uname -r)"
exec $B switch_root "$R" /lib/systemd/systemd --unit=vmtest.target \
	--log-target=console --log-level=notice --show-status=false
