#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    let _ = xlb::fuzzing::bgp_message(data);
});
