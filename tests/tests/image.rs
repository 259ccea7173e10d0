//! The job image: the Spec Kit scaffolding it prepares at build time is what `specify
//! init` itself writes, so a run that copies it (`specrun-speckit-init`) commits the same
//! files as one that runs init; Gemini CLI runs on its own Node. The demo's image (the
//! `scripted` target, without the agent CLIs) runs the demo.

use specrun_core::RunStatus;
use specrun_tests::harness::{job_image, scripted_image, Harness};
use std::process::Command;

type TestResult = anyhow::Result<()>;

/// Runs `script` (sh) in a throwaway job container as the agent's user; its stdout.
fn in_job_image(script: &str) -> anyhow::Result<String> {
    let out = Command::new("docker")
        .args([
            "run",
            "--rm",
            "--network",
            "none",
            &job_image(),
            "sh",
            "-c",
            script,
        ])
        .output()?;
    anyhow::ensure!(
        out.status.success(),
        "the script failed in the job image ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(String::from_utf8(out.stdout)?)
}

/// For every integration the image prepared, `specify init` in one fresh repository and
/// the prepared copy in another: the trees hold the same paths, the same bytes and the
/// same permissions, but for the install timestamps (which differ between any two
/// inits), and the copy's timestamps are real ones.
#[test]
fn the_prepared_scaffolding_is_what_specify_init_writes() -> TestResult {
    let script = r##"set -eu
integrations=$(find /opt/specify/scaffold -mindepth 1 -maxdepth 1 -type d -printf '%f\n' | sort)
[ -n "$integrations" ] || { echo "no scaffold in the image"; exit 1; }
stamp='s/"(installed_at|updated_at)": "[^"]*"/"\1": "T"/g'
for integration in $integrations; do
    for how in init copy; do
        dir="/tmp/$integration-$how"
        mkdir -p "$dir" && cd "$dir" && git init -q
        echo "# an existing file" > README.md
        if [ "$how" = init ]; then
            specify init --here --force --integration "$integration" --script sh \
                --non-interactive --ignore-agent-tools > /dev/null
        else
            specrun-speckit-init "$integration" > /dev/null
            if grep -rq '@SPECRUN_INSTALLED_AT@' .; then echo "placeholder left in $dir"; exit 1; fi
            grep -rhoE '"installed_at": "[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9:.]+\+00:00"' . | head -n 1 \
                | grep -q . || { echo "no install timestamp in $dir"; exit 1; }
        fi
        rm -rf .git
        grep -rlE '"(installed_at|updated_at)": "' . | while read -r f; do sed -i -E "$stamp" "$f"; done
        find . -type f | sort | while read -r f; do
            echo "$(stat -c %a "$f") $(sha256sum < "$f" | cut -c1-64) $f"
        done > "/tmp/$integration-$how.list"
    done
    if ! diff "/tmp/$integration-init.list" "/tmp/$integration-copy.list"; then
        echo "DIFFERENT: $integration"; exit 1
    fi
    echo "$integration $(wc -l < "/tmp/$integration-init.list")"
done
"##;
    let out = in_job_image(script)?;
    let counts: Vec<(&str, usize)> = out
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(name, n)| (name, n.trim().parse().unwrap_or(0)))
        .collect();
    let names: Vec<&str> = counts.iter().map(|(name, _)| *name).collect();
    for expected in ["none", "codex", "claude", "gemini", "copilot"] {
        assert!(names.contains(&expected), "{expected} not prepared: {out}");
    }
    for (name, files) in counts {
        // init writes the templates, scripts and memory under .specify/ at least, and
        // the README the repository already had stays.
        assert!(files > 15, "{name}: only {files} files: {out}");
    }
    Ok(())
}

/// An integration the image did not prepare still initialises, by `specify init` itself.
#[test]
fn an_integration_without_a_scaffold_falls_back_to_specify_init() -> TestResult {
    let out = in_job_image(
        r#"set -eu; mkdir /tmp/r && cd /tmp/r && git init -q
[ ! -d /opt/specify/scaffold/codebuddy ] || { echo "codebuddy is prepared"; exit 1; }
specrun-speckit-init codebuddy > /tmp/out 2>&1 || { cat /tmp/out; exit 1; }
grep -q '"integration": "codebuddy"' .specify/integration.json && echo initialised"#,
    )?;
    assert_eq!(out.trim(), "initialised", "{out}");
    Ok(())
}

/// Gemini CLI needs Node >= 20: it runs on the image's own Node 24, offline, while `node`
/// on PATH (Codex's, npm's) stays the distribution's.
#[test]
fn gemini_cli_runs_on_its_own_node_and_leaves_the_others_alone() -> TestResult {
    let out = in_job_image(
        "gemini --version; /opt/node24/bin/node --version; node --version; codex --version",
    )?;
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert_eq!(lines[0], "0.61.0", "{out}");
    let major = |v: &str| {
        v.trim_start_matches('v')
            .split('.')
            .next()
            .and_then(|m| m.parse::<u32>().ok())
    };
    assert!(major(lines[1]).is_some_and(|m| m >= 20), "{out}");
    assert!(major(lines[2]).is_some_and(|m| m < 20), "{out}");
    assert!(lines[3].starts_with("codex-cli "), "{out}");
    Ok(())
}

/// The demo's image (`scripts/build-image.sh --target scripted`, what `scripts/demo.sh`
/// builds on a machine without a current full image) holds everything a run with the
/// scripted agent needs: the run succeeds and pushes the spec, plan and tasks with Spec
/// Kit's scaffolding, as on the full image.
#[tokio::test(flavor = "multi_thread")]
async fn the_scripted_image_runs_the_demo() -> TestResult {
    let h = Harness::start().await?;
    let mut config = h.config.clone();
    config.image = scripted_image();
    let url = h.git().create_repo("demo", "# Sample app\n")?;
    let text = "Let members reset a forgotten password by email";
    let record = h.run_with(config, h.request(&url, text)).await?;

    assert_eq!(record.status, RunStatus::Succeeded, "{:#?}", record.error);
    let branch = record.branch_name.clone().unwrap_or_default();
    assert_eq!(
        h.git().branches("demo")?,
        vec![branch.clone(), "main".to_owned()]
    );
    for file in [
        format!("specs/{branch}/spec.md"),
        format!("specs/{branch}/plan.md"),
        format!("specs/{branch}/tasks.md"),
        ".specify/templates/spec-template.md".to_owned(),
    ] {
        assert!(
            h.git().read_file("demo", &branch, &file)?.is_some(),
            "{file} missing on {branch}"
        );
    }
    Ok(())
}
