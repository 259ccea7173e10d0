//! `run.json` and `phases/<phase>.json`: parse, use as a runner would, round-trip.

fn main() {
    afl::fuzz!(|data: &[u8]| specrun_fuzz::state(data));
}
