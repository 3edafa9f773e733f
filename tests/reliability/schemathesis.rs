//! Contract fuzzing: schemathesis against a running server's own OpenAPI document.
//!
//! [`run`] installs schemathesis at the version pinned in `schemathesis-requirements.txt`
//! into a virtual environment under the target folder (once; again when the pins change),
//! then runs it with every check against `{base_url}/api/schema/`, with a bounded number
//! of examples per operation and a fixed seed, so that a run is repeatable and takes a
//! couple of minutes. It passes only when schemathesis reports no failure at all: no
//! server error, no response that breaks its schema, no request the document calls
//! valid that the server refuses, and none it calls invalid that the server takes. The
//! few refusals a schema cannot predict (taken usernames, the password rules, rules
//! across fields) are allowed in `schemathesis.toml`, each with its reason.
//!
//! It needs `python3` with its `venv` module (Debian's `python3-venv`, which
//! `.ci/validate-openapi` needs too) and access to PyPI the first time; without `python3`
//! it skips with one line, as `tests/api/system.rs` does for every system program. The
//! server must run with its throttles off and the token must belong to a logged-in user
//! whose password the run does not know (so no request can change it).

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::system;

/// Test cases per operation and phase: enough to cover every constraint of the document
/// (the coverage phase tests each boundary whatever this number), few enough for a run of
/// about a minute and a half on two busy cores.
const MAX_EXAMPLES: u32 = 30;
/// The seed of every run, so that a failure reproduces.
const SEED: u32 = 20261201;
/// Every phase: the document's examples, the boundaries of each constraint (coverage),
/// random data (fuzzing) and sequences of calls through the document's links (stateful).
const PHASES: &str = "examples,coverage,fuzzing,stateful";
/// The longest a run may take before it is stopped and reported as failed: an upper
/// bound for a hang, far above a normal run.
const RUN_LIMIT: Duration = Duration::from_secs(20 * 60);
/// The longest the installation may take.
const INSTALL_LIMIT: Duration = Duration::from_secs(10 * 60);

/// Runs schemathesis against the server at `base_url` (`http://127.0.0.1:PORT`) as the
/// user of `access_token`. Blocks for the whole run (install included), so call it off the
/// async worker threads. Ok: a one-line summary. Err: schemathesis's findings, or why it
/// could not run.
pub fn run(base_url: &str, access_token: &str) -> Result<String, String> {
    let Some(python) = system::require("python3", "python3-venv", "schemathesis") else {
        return Ok("schemathesis skipped: `python3` is missing".to_owned());
    };
    let files = Files::locate();
    let schemathesis = install(&files, &python)?;
    let work = files.target.join("schemathesis");
    fs::create_dir_all(&work).map_err(|error| format!("creating {}: {error}", work.display()))?;
    let output_path = work.join("output.txt");
    let output = File::create(&output_path)
        .map_err(|error| format!("creating {}: {error}", output_path.display()))?;
    let errors = output
        .try_clone()
        .map_err(|error| format!("opening {}: {error}", output_path.display()))?;
    let schema_url = format!("{}/api/schema/", base_url.trim_end_matches('/'));
    let child = Command::new(&schemathesis)
        .arg("--config-file")
        .arg(&files.config)
        .arg("--no-color")
        .args(["run", &schema_url])
        .args(["--checks", "all"])
        .args(["--max-examples", &MAX_EXAMPLES.to_string()])
        .args(["--seed", &SEED.to_string()])
        .args(["--phases", PHASES])
        .args(["-H", &format!("Authorization: Bearer {access_token}")])
        // The run's own files (Hypothesis's folder among them) stay under the target folder.
        .current_dir(&work)
        .stdin(Stdio::null())
        .stdout(output)
        .stderr(errors)
        .spawn()
        .map_err(|error| format!("starting {}: {error}", schemathesis.display()))?;
    let started = Instant::now();
    let status = wait(child, RUN_LIMIT).map_err(|error| format!("schemathesis: {error}"))?;
    let text = fs::read_to_string(&output_path)
        .map_err(|error| format!("reading {}: {error}", output_path.display()))?;
    if status.success() {
        Ok(summary(&text, started.elapsed()))
    } else {
        Err(format!(
            "schemathesis found problems ({status}; the whole output is in {}):\n{}",
            output_path.display(),
            findings(&text)
        ))
    }
}

/// Where the pins, the settings and the virtual environment are.
struct Files {
    /// `schemathesis-requirements.txt`: schemathesis and everything it needs, pinned.
    requirements: PathBuf,
    /// `schemathesis.toml`: the settings and the allowed exceptions.
    config: PathBuf,
    /// `CARGO_TARGET_DIR`, or the workspace's `target/`.
    target: PathBuf,
}

impl Files {
    fn locate() -> Files {
        let root = Path::new(env!("CARGO_MANIFEST_DIR"));
        let here = root.join("tests").join("reliability");
        let target = match std::env::var_os("CARGO_TARGET_DIR") {
            Some(dir) if !dir.is_empty() => root.join(dir),
            _ => root.join("target"),
        };
        Files {
            requirements: here.join("schemathesis-requirements.txt"),
            config: here.join("schemathesis.toml"),
            target,
        }
    }
}

/// The path of the `schemathesis` program, installed into `target/schemathesis-venv` from
/// the pinned requirements unless that environment already holds exactly those pins.
fn install(files: &Files, python: &Path) -> Result<PathBuf, String> {
    let venv = files.target.join("schemathesis-venv");
    let program = venv.join("bin").join("schemathesis");
    let installed_pins = venv.join("installed-requirements.txt");
    let pins = fs::read_to_string(&files.requirements)
        .map_err(|error| format!("reading {}: {error}", files.requirements.display()))?;
    if program.exists()
        && fs::read_to_string(&installed_pins).is_ok_and(|installed| installed == pins)
    {
        return Ok(program);
    }
    fs::create_dir_all(&files.target)
        .map_err(|error| format!("creating {}: {error}", files.target.display()))?;
    run_step(
        Command::new(python)
            .args(["-m", "venv", "--clear"])
            .arg(&venv),
        "creating the virtual environment (python3 -m venv)",
    )?;
    run_step(
        Command::new(venv.join("bin").join("pip"))
            .args([
                "install",
                "--quiet",
                "--disable-pip-version-check",
                "--requirement",
            ])
            .arg(&files.requirements),
        "installing schemathesis (pip install)",
    )?;
    fs::write(&installed_pins, pins)
        .map_err(|error| format!("writing {}: {error}", installed_pins.display()))?;
    Ok(program)
}

/// Runs one installation step to its end; Err with its output when it fails.
fn run_step(command: &mut Command, what: &str) -> Result<(), String> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|error| format!("{what}: {error}"))?;
    let output =
        wait_with_output(child, INSTALL_LIMIT).map_err(|error| format!("{what}: {error}"))?;
    if output.status.success() {
        return Ok(());
    }
    Err(format!(
        "{what} failed ({}):\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    ))
}

/// Waits for `child` for at most `limit`; past it, the child is killed and the wait fails.
fn wait(mut child: Child, limit: Duration) -> Result<ExitStatus, String> {
    let deadline = Instant::now() + limit;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Ok(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(format!(
                    "still running after {} s: stopped",
                    limit.as_secs()
                ));
            }
            Err(error) => return Err(error.to_string()),
        }
    }
}

/// [`wait`] for a child whose output is piped: the pipes are drained on their own
/// threads, so a chatty child cannot block on a full pipe.
fn wait_with_output(mut child: Child, limit: Duration) -> Result<std::process::Output, String> {
    use std::io::Read;
    let drain = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            if let Some(mut pipe) = pipe {
                let _ = pipe.read_to_end(&mut bytes);
            }
            bytes
        })
    };
    let stdout = drain(
        child
            .stdout
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    );
    let stderr = drain(
        child
            .stderr
            .take()
            .map(|pipe| Box::new(pipe) as Box<dyn Read + Send>),
    );
    let status = wait(child, limit)?;
    Ok(std::process::Output {
        status,
        stdout: stdout.join().unwrap_or_default(),
        stderr: stderr.join().unwrap_or_default(),
    })
}

/// One line from a passing run's output: the version, the operations and test cases, and
/// how long it took.
fn summary(output: &str, took: Duration) -> String {
    let after = |label: &str| {
        let mut lines = output
            .lines()
            .skip_while(|line| line.trim() != label)
            .skip(1);
        lines.next().map(|line| line.trim().to_owned())
    };
    let operations = output
        .lines()
        .find_map(|line| line.trim().strip_prefix("Tested:"))
        .map_or_else(
            || "? operations".to_owned(),
            |n| format!("{} operations", n.trim()),
        );
    let cases = after("Test cases:").unwrap_or_else(|| "? test cases".to_owned());
    format!(
        "schemathesis {} ({MAX_EXAMPLES} examples, seed {SEED}, all checks): {operations}, {cases}, in {} s",
        version(output),
        took.as_secs()
    )
}

/// The version schemathesis prints in its header, or `?`.
fn version(output: &str) -> String {
    output
        .lines()
        .find_map(|line| line.trim().strip_prefix("Schemathesis v"))
        .map_or_else(
            || "?".to_owned(),
            |rest| rest.split_whitespace().next().unwrap_or("?").to_owned(),
        )
}

/// The failures and errors of a failing run, and its summary: the output from its
/// `FAILURES` (or `ERRORS`) heading on, or all of it when it has neither.
fn findings(output: &str) -> String {
    let start = ["FAILURES", "ERRORS"]
        .iter()
        .filter_map(|heading| {
            output
                .lines()
                .position(|line| line.starts_with('=') && line.contains(heading))
        })
        .min();
    match start {
        Some(start) => output.lines().skip(start).collect::<Vec<_>>().join("\n"),
        None => output.to_owned(),
    }
}
