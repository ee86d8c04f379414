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
//! Network calls (`net.rs`), packet payloads for DNS/TLS (`skb.rs`) and
//! suspicious syscalls (`syscalls.rs`) have their own modules.
#![no_std]
#![no_main]

mod files;
mod maps;
mod moves;
mod net;
mod path;
mod probes;
mod probes_fexit;
mod read;
mod skb;
mod syscalls;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
