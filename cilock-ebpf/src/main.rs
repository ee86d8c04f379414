//! cilock's kernel programs.
//!
//! Every program first asks which step the current task belongs to: the
//! ancestor of its cgroup at the step level (`STEP_LEVEL`, set by the daemon)
//! must be registered in `STEPS`. Everything else returns at once, so tasks
//! outside a step pay one helper call and one hash lookup.
//!
//! Records (see `cilock-abi`) are built in a per-CPU scratch buffer and sent
//! with `bpf_ringbuf_output`; wakeups are batched (`NO_WAKEUP` until
//! `WAKEUP_BYTES` are pending) and the daemon also polls on a timer. A record
//! that does not fit is counted as lost, globally and per step, in the kernel.
//!
//! Paths are produced by walking `dentry → d_parent` and crossing mounts like
//! the kernel's `prepend_path()`, inside `bpf_loop`, from the `struct file` the
//! syscall just installed, so they are absolute and canonical regardless of
//! dirfd, cwd or symlinks. Struct offsets come from BTF at load time
//! (`OFFSETS`), because Rust eBPF has no CO-RE.
//!
//! The programs live in `probes/`, one module per event family (process,
//! file, cgroup, net, payload, syscall: the same names as the records in
//! `cilock-abi`); what they share (maps, reads, the path walk, building and
//! sending records) lives in `common/`.
//!
//! # Unsafe
//!
//! A kernel program cannot avoid `unsafe`: every BPF helper is an `unsafe
//! fn`, and records are built by casting the per-CPU scratch buffer to a
//! record type. The rules kept here:
//!
//! * Kernel memory is only read through `bpf_probe_read_*` (`common::read`),
//!   which fails instead of faulting; a failed read yields `None` or a
//!   zero, never a dereference of a kernel pointer.
//! * A buffer is cast only to a `cilock_abi::Record` (plain old data, valid
//!   for every bit pattern) that fits in it; `common::record::start` is the
//!   one place that casts the scratch buffer to a record.
//! * Every length or offset that indexes a buffer is masked to a power of
//!   two the verifier can check, even where the code already bounds it.
//! * `.rodata` constants set by the loader are read with `read_volatile`
//!   (`off!`, `ro`, `syscfg!`), so the compiler cannot fold their
//!   compile-time zero.
//! * Per-CPU buffers are used by one program at a time per CPU; programs
//!   that can nest (the socket-buffer hooks in softirq) have one buffer per
//!   nesting level.
//!
//! Each `unsafe` block that does more than call a helper says why it is
//! sound in a `// SAFETY:` comment.
#![no_std]
#![no_main]

mod common;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
