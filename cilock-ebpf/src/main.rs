#![no_std]
#![no_main]
//! cilock kernel programs (being written).
#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
