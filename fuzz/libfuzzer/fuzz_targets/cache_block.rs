#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pai_fuzz_targets::cache_block(data));
