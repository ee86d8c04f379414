# The @systemd tests, run by vmtest.service under systemd as PID 1 (see
# init-systemd.sh). Same channels and markers as init.sh: each test's output
# on ttyS1 between VMTEST-BEGIN/VMTEST-RESULT, the overall code through
# isa-debug-exit.
B=/.vm/busybox
exit_qemu() {
	printf "\\$(printf %03o "$1")" | $B dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
	$B poweroff -f
}
read -r up _ < /proc/uptime
echo "vmtest: systemd reached vmtest.service at ${up}s ($(systemctl is-system-running 2>&1))"
rc_all=0
exec 3< /.vm/tests.list
while IFS="$(printf '\t')" read -r name command <&3; do
	[ -n "$name" ] || continue
	read -r t0 _ < /proc/uptime
	echo "VMTEST-BEGIN $name" > /dev/ttyS1
	echo "vmtest: running $name"
	(cd /tmp && $B env -i $($B cat /.vm/env) $B timeout -s KILL "$($B cat /.vm/test-timeout)" $B sh -c "$command") > /dev/ttyS1 2>&1
	rc=$?
	read -r t1 _ < /proc/uptime
	secs=$($B awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")
	echo "VMTEST-RESULT $name rc=$rc secs=$secs" > /dev/ttyS1
	echo "vmtest: $name rc=$rc (${secs}s)"
	[ "$rc" -eq 0 ] || rc_all=1
done
exec 3<&-
echo "VMTEST-EXIT $rc_all" > /dev/ttyS1
exit_qemu "$rc_all"
