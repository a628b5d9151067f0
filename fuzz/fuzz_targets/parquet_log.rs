#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| podium_fuzz::parquet_log(data));
