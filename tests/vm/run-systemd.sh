# The @systemd tests, run by vmtest.service under systemd as PID 1 (see
# init-systemd.sh). Same channels and markers as init.sh: each test's output
# on ttyS1 between VMTEST-BEGIN/VMTEST-RESULT, the overall code through
# isa-debug-exit.
B=/.vm/busybox
log() { echo "vmtest: $*"; }
# exit_qemu and run_tests (the test loop both boots share).
. /.vm/run-tests.sh
read -r up _ < /proc/uptime
echo "vmtest: systemd reached vmtest.service at ${up}s ($(systemctl is-system-running 2>&1))"
run_tests
