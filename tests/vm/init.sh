#!/.vm/busybox sh
# /init of the kernel-matrix guest (`cargo xtask vm-test`). Runs as PID 1
# from the initramfs the harness writes; busybox is /.vm/busybox. The guest's
# userland is the host's own, shared read-only over virtio-9p, so the tests
# run the same binaries (daemon, cilock, strace, python3, sh, ...) as on the
# host, only on another kernel.
#
# Channels: ttyS0 = console (kernel log, this script's progress);
# ttyS1 = results (each test's output between VMTEST markers);
# isa-debug-exit port 0xf4 = the overall exit code.
B=/.vm/busybox
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

log() { echo "vmtest: $*"; }
die() {
	log "FATAL: $*"
	echo "VMTEST-EXIT 99" > /dev/ttyS1
	exit_qemu 99
}
# exit_qemu and run_tests (the test loop both boots share).
. /.vm/run-tests.sh

$B mount -t proc proc /proc
$B mount -t sysfs sysfs /sys
$B mount -t devtmpfs devtmpfs /dev
$B mkdir -p /dev/pts /dev/shm

# virtio + 9p modules (+ overlay in the systemd mode), in dependency order
# (built-in ones are not listed).
for m in $($B cat /.vm/modules.order); do
	$B insmod "/.vm/modules/$m" || die "insmod $m"
done
$B mount -t 9p -o ro,trans=virtio,version=9p2000.L,msize=512000,cache=loose hostroot /.vm/host \
	|| die "mounting the host's root over 9p"
# The @systemd boot: an overlay of the host's root, systemd as PID 1.
[ "$($B cat /.vm/mode)" = systemd ] && . /.vm/init-systemd.sh
$B mount -t devpts devpts /dev/pts
$B mount -t tmpfs -o mode=1777 tmpfs /dev/shm
$B mount -t tmpfs -o mode=1777 tmpfs /tmp
$B mount -t tmpfs -o mode=755 tmpfs /run
$B mount -t tracefs tracefs /sys/kernel/tracing || die "tracefs"
$B mount -t debugfs debugfs /sys/kernel/debug
$B mount -t bpf bpf /sys/fs/bpf || die "bpffs"
$B mount -t cgroup2 cgroup2 /sys/fs/cgroup || die "cgroup2"
$B mount -t securityfs securityfs /sys/kernel/security
$B ip link set lo up || die "lo up"
$B hostname vmtest

for d in $($B cat /.vm/binds); do
	$B mkdir -p "/$d"
	$B mount --bind "/.vm/host/$d" "/$d" || die "bind /$d"
done

read -r up _ < /proc/uptime
log "userland ready at ${up}s: $($B uname -r), lsm=$($B cat /sys/kernel/security/lsm 2>/dev/null)"

run_tests
