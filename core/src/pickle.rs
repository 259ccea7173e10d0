//! A minimal Python pickle writer (protocol 2) for JSON-shaped values: what Celery's
//! database result backend keeps in `celery_taskmeta.result`. Celery up to 5.6 stores that
//! column as a `PickleType` whatever the result serializer, and 5.7 falls back to
//! unpickling when the bytes are not in the serializer's format; protocol 2 is read by
//! every Python 3 (and so by Celery 5.4 to 5.7).
//!
//! Only what a run's result needs is written: `None`, booleans, integers, floats, strings,
//! lists and dicts with string keys (a JSON value, mapped the way `json.loads` maps it).
//! No memo, no object references: every opcode used is a plain constructor, so the output
//! can be read by `pickle.loads` without importing any class. Pure: bytes out, no I/O.

use serde_json::Value;

/// Opcodes of pickle protocols 0 to 2 (names as in CPython's `pickle.py`).
mod op {
    pub const PROTO: u8 = 0x80;
    pub const STOP: u8 = b'.';
    pub const NONE: u8 = b'N';
    pub const NEWTRUE: u8 = 0x88;
    pub const NEWFALSE: u8 = 0x89;
    pub const BININT1: u8 = b'K';
    pub const BININT2: u8 = b'M';
    pub const BININT: u8 = b'J';
    pub const LONG1: u8 = 0x8a;
    pub const BINFLOAT: u8 = b'G';
    pub const BINUNICODE: u8 = b'X';
    pub const EMPTY_LIST: u8 = b']';
    pub const EMPTY_DICT: u8 = b'}';
    pub const MARK: u8 = b'(';
    pub const APPENDS: u8 = b'e';
    pub const SETITEMS: u8 = b'u';
}

/// Items per `MARK ... APPENDS`/`SETITEMS` batch, as CPython batches them.
const BATCH: usize = 1000;

/// `value` as a protocol 2 pickle, readable by `pickle.loads`.
pub fn to_pickle(value: &Value) -> Vec<u8> {
    let mut out = vec![op::PROTO, 2];
    write(&mut out, value);
    out.push(op::STOP);
    out
}

fn write(out: &mut Vec<u8>, value: &Value) {
    match value {
        Value::Null => out.push(op::NONE),
        Value::Bool(true) => out.push(op::NEWTRUE),
        Value::Bool(false) => out.push(op::NEWFALSE),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                write_int(out, i128::from(i));
            } else if let Some(u) = n.as_u64() {
                write_int(out, i128::from(u));
            } else {
                out.push(op::BINFLOAT);
                out.extend_from_slice(&n.as_f64().unwrap_or(f64::NAN).to_be_bytes());
            }
        }
        Value::String(s) => write_str(out, s),
        Value::Array(items) => {
            out.push(op::EMPTY_LIST);
            for chunk in items.chunks(BATCH) {
                out.push(op::MARK);
                chunk.iter().for_each(|item| write(out, item));
                out.push(op::APPENDS);
            }
        }
        Value::Object(map) => {
            out.push(op::EMPTY_DICT);
            let entries: Vec<_> = map.iter().collect();
            for chunk in entries.chunks(BATCH) {
                out.push(op::MARK);
                for (key, item) in chunk {
                    write_str(out, key);
                    write(out, item);
                }
                out.push(op::SETITEMS);
            }
        }
    }
}

fn write_str(out: &mut Vec<u8>, s: &str) {
    out.push(op::BINUNICODE);
    // A JSON string longer than 4 GiB cannot be held here in the first place.
    let len = u32::try_from(s.len()).unwrap_or(u32::MAX);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

fn write_int(out: &mut Vec<u8>, i: i128) {
    if let Ok(small) = u8::try_from(i) {
        out.extend_from_slice(&[op::BININT1, small]);
    } else if let Ok(medium) = u16::try_from(i) {
        out.push(op::BININT2);
        out.extend_from_slice(&medium.to_le_bytes());
    } else if let Ok(word) = i32::try_from(i) {
        out.push(op::BININT);
        out.extend_from_slice(&word.to_le_bytes());
    } else {
        // LONG1: little-endian two's complement in as few bytes as keep the sign.
        let bytes = i.to_le_bytes();
        let mut len = bytes.len();
        while len > 1 {
            let top = bytes[len - 1];
            let next_sign = bytes[len - 2] & 0x80;
            if (top == 0 && next_sign == 0) || (top == 0xff && next_sign != 0) {
                len -= 1;
            } else {
                break;
            }
        }
        out.push(op::LONG1);
        out.push(len as u8);
        out.extend_from_slice(&bytes[..len]);
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    // Expected bytes are what CPython's `pickle.dumps(value, protocol=2)` writes, less its
    // memo (BINPUT) opcodes, which `pickle.loads` does not need.

    #[test]
    fn scalars() {
        assert_eq!(to_pickle(&json!(null)), b"\x80\x02N.");
        assert_eq!(to_pickle(&json!(true)), b"\x80\x02\x88.");
        assert_eq!(to_pickle(&json!(false)), b"\x80\x02\x89.");
        assert_eq!(to_pickle(&json!(7)), b"\x80\x02K\x07.");
        assert_eq!(to_pickle(&json!(300)), b"\x80\x02M,\x01.");
        assert_eq!(to_pickle(&json!(-1)), b"\x80\x02J\xff\xff\xff\xff.");
        assert_eq!(to_pickle(&json!(70000)), b"\x80\x02Jp\x11\x01\x00.");
        assert_eq!(
            to_pickle(&json!(1.5)),
            b"\x80\x02G?\xf8\x00\x00\x00\x00\x00\x00."
        );
    }

    #[test]
    fn big_integers_use_the_fewest_bytes_that_keep_the_sign() {
        // pickle.dumps(2**31, 2) and pickle.dumps(-2**31 - 1, 2)
        assert_eq!(
            to_pickle(&json!(2_147_483_648_u64)),
            b"\x80\x02\x8a\x05\x00\x00\x00\x80\x00."
        );
        assert_eq!(
            to_pickle(&json!(-2_147_483_649_i64)),
            b"\x80\x02\x8a\x05\xff\xff\xff\x7f\xff."
        );
        assert_eq!(
            to_pickle(&json!(u64::MAX)),
            b"\x80\x02\x8a\x09\xff\xff\xff\xff\xff\xff\xff\xff\x00."
        );
    }

    #[test]
    fn strings_are_utf8_with_a_length() {
        assert_eq!(
            to_pickle(&json!("hé")),
            b"\x80\x02X\x03\x00\x00\x00h\xc3\xa9."
        );
        assert_eq!(to_pickle(&json!("")), b"\x80\x02X\x00\x00\x00\x00.");
    }

    #[test]
    fn containers() {
        assert_eq!(to_pickle(&json!([])), b"\x80\x02].");
        assert_eq!(
            to_pickle(&json!([1, "a"])),
            b"\x80\x02](K\x01X\x01\x00\x00\x00ae."
        );
        assert_eq!(
            to_pickle(&json!({"k": [null]})),
            b"\x80\x02}(X\x01\x00\x00\x00k](Neu."
        );
    }

    #[test]
    fn long_lists_are_written_in_batches() {
        let long = Value::Array(vec![json!(0); 2500]);
        let bytes = to_pickle(&long);
        let marks = bytes.iter().filter(|b| **b == op::MARK).count();
        let appends = bytes.iter().filter(|b| **b == op::APPENDS).count();
        assert_eq!((marks, appends), (3, 3));
    }
}
