# The test loop of both boots, sourced by init.sh (busybox as PID 1) and by
# run-systemd.sh (systemd as PID 1): each line of /.vm/tests.list
# (NAME<TAB>COMMAND) runs in /tmp with the environment of /.vm/env (KEY=VALUE
# lines) under `timeout`, its output on ttyS1 between VMTEST-BEGIN and
# VMTEST-RESULT; VMTEST-EXIT and the code through isa-debug-exit (port 0xf4;
# QEMU exits with (rc << 1) | 1) end the run. Needs $B (busybox) and log().
exit_qemu() {
	printf "\\$(printf %03o "$1")" | $B dd of=/dev/port bs=1 seek=244 count=1 conv=notrunc 2>/dev/null
	$B poweroff -f
}

run_tests() {
	rc_all=0
	exec 3< /.vm/tests.list
	while IFS="$(printf '\t')" read -r name command <&3; do
		[ -n "$name" ] || continue
		read -r t0 _ < /proc/uptime
		echo "VMTEST-BEGIN $name" > /dev/ttyS1
		log "running $name"
		(cd /tmp && $B env -i $($B cat /.vm/env) $B timeout -s KILL "$($B cat /.vm/test-timeout)" $B sh -c "$command") > /dev/ttyS1 2>&1
		rc=$?
		read -r t1 _ < /proc/uptime
		secs=$($B awk "BEGIN { printf \"%.1f\", $t1 - $t0 }")
		echo "VMTEST-RESULT $name rc=$rc secs=$secs" > /dev/ttyS1
		log "$name rc=$rc (${secs}s)"
		[ "$rc" -eq 0 ] || rc_all=1
	done
	exec 3<&-
	echo "VMTEST-EXIT $rc_all" > /dev/ttyS1
	exit_qemu "$rc_all"
}
