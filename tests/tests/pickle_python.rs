//! specrun's pickle writer (`specrun_core::pickle`), read back by the real Python
//! `pickle.loads`: every value a run's Celery result can hold comes back equal.

use anyhow::{ensure, Context as _};
use serde_json::{json, Value};
use specrun_core::celery::failure_result;
use specrun_core::pickle::to_pickle;
use std::io::Write as _;
use std::process::{Command, Stdio};

/// `pickle.loads(bytes)` in Python, printed back as JSON (with Python's own type names
/// for what JSON cannot tell apart).
fn python_loads(bytes: &[u8]) -> anyhow::Result<Value> {
    let script = "import json, pickle, sys\n\
                  value = pickle.loads(sys.stdin.buffer.read())\n\
                  print(json.dumps({'type': type(value).__name__, 'value': value}))";
    let mut child = Command::new("python3")
        .args(["-c", script])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("running python3")?;
    child.stdin.take().context("no stdin")?.write_all(bytes)?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "pickle.loads failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[test]
fn python_unpickles_what_specrun_pickles() -> anyhow::Result<()> {
    let long: Vec<Value> = (0..1500).map(|n| json!(n * 1000)).collect();
    let values = [
        json!(null),
        json!(true),
        json!(false),
        json!(0),
        json!(255),
        json!(256),
        json!(65_536),
        json!(-1),
        json!(i64::MIN),
        json!(u64::MAX),
        json!(2.5),
        json!("naïve ✓ \u{0}"),
        json!([]),
        json!({}),
        Value::Array(long),
        json!({
            "run_id": "0193-run",
            "status": "succeeded",
            "commit_sha": null,
            "error": {"code": "clone_failed", "message": "x", "retryable": false},
            "phases": [["specify", 1], ["plan", 2]],
        }),
        failure_result("SpecrunRunFailed", "run r: clone failed"),
    ];
    for value in values {
        let back = python_loads(&to_pickle(&value))?;
        assert_eq!(back["value"], value, "{value}");
        let expected_type = match &value {
            Value::Null => "NoneType",
            Value::Bool(_) => "bool",
            Value::Number(n) if n.is_f64() => "float",
            Value::Number(_) => "int",
            Value::String(_) => "str",
            Value::Array(_) => "list",
            Value::Object(_) => "dict",
        };
        assert_eq!(back["type"], expected_type, "{value}");
    }
    Ok(())
}
