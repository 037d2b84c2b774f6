#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = xlb::fuzzing::admin(data);
});
