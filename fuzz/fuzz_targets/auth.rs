#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| ringsq::fuzz_targets::auth::auth(data));
