//! The `imagepipe` binary given hostile or careless input: each case ends with a clear message and
//! the right exit code, never a hang, a loop or a leaked credential.

use std::io::Write;
use std::path::Path;
use std::process::{Command, Output, Stdio};

const CSV: &[u8] = b"sku,name,color\nA1,mug,red\nA2,cup,blue\n";

fn imagepipe(args: &[&str], dir: &Path, env: &[(&str, &str)]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args(args)
        .current_dir(dir)
        .envs(env.iter().copied())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .expect("imagepipe runs")
}

fn csv_in(dir: &Path) -> &'static str {
    std::fs::write(dir.join("p.csv"), CSV).unwrap();
    "p.csv"
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

const RUN: [&str; 5] = ["run", "-t", "product", "--provider", "placeholder"];

#[test]
fn a_zero_timeout_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let csv = csv_in(dir.path());
    let out = imagepipe(&[&RUN[..], &[csv, "--timeout-secs", "0"]].concat(), dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("--timeout-secs"), "{}", stderr(&out));
}

#[test]
fn an_endless_templates_file_is_refused_not_read_forever() {
    let dir = tempfile::tempdir().unwrap();
    let csv = csv_in(dir.path());
    let out = imagepipe(
        &[&RUN[..], &[csv, "--templates", "/dev/zero"]].concat(),
        dir.path(),
        &[],
    );
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("templates file /dev/zero is larger than 1048576 bytes"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_csv_on_stdin_is_run_whole() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args([&RUN[..], &["/dev/stdin", "--json"]].concat())
        .current_dir(dir.path())
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(CSV).unwrap();
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["succeeded"].as_u64(), Some(2));
}

#[test]
fn a_cms_url_with_userinfo_is_refused_without_showing_it() {
    let dir = tempfile::tempdir().unwrap();
    let csv = csv_in(dir.path());
    let env = [
        (
            "CMS_BASE_URL",
            "https://admin:hunter2secret@cms.example.com/api?key=abc",
        ),
        ("CMS_TOKEN", "token-0123456789"),
        ("IMAGEPIPE_PUBLIC_BASE_URL", "https://cdn.example.com"),
    ];
    let out = imagepipe(&[&RUN[..], &[csv]].concat(), dir.path(), &env);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert!(text.contains("must not carry a user name or password"), "{text}");
    assert!(!text.contains("hunter2") && !text.contains("key=abc"), "{text}");
    let relative = imagepipe(
        &[&RUN[..], &[csv]].concat(),
        dir.path(),
        &[env[1], env[2], ("CMS_BASE_URL", "cms/api")],
    );
    assert!(stderr(&relative).contains("is not a URL"), "{}", stderr(&relative));
}

#[test]
fn a_run_whose_cms_updates_all_failed_exits_1() {
    let dir = tempfile::tempdir().unwrap();
    let csv = csv_in(dir.path());
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let cms = format!("http://{closed}");
    let env = [
        ("CMS_BASE_URL", cms.as_str()),
        ("CMS_TOKEN", "token-0123456789"),
        ("IMAGEPIPE_PUBLIC_BASE_URL", "https://cdn.example.com"),
    ];
    let out = imagepipe(&[&RUN[..], &[csv, "--max-attempts", "1"]].concat(), dir.path(), &env);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("2/2 succeeded") && text.contains("CMS not updated"),
        "{text}"
    );
}

#[test]
fn an_unreadable_csv_is_reported_once() {
    let dir = tempfile::tempdir().unwrap();
    let out = imagepipe(&[&RUN[..], &["missing.csv"]].concat(), dir.path(), &[]);
    assert_eq!(out.status.code(), Some(2));
    let text = stderr(&out);
    assert_eq!(text.matches("No such file").count(), 1, "{text}");
}

#[test]
fn ctrl_c_mid_run_writes_an_interrupted_report_and_exits_130() {
    let dir = tempfile::tempdir().unwrap();
    let csv = csv_in(dir.path());
    // A provider stand-in that accepts the call and never answers.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let child = Command::new(env!("CARGO_BIN_EXE_imagepipe"))
        .args(["run", csv, "-t", "product", "--provider", "gemini", "-c", "1", "--json"])
        .current_dir(dir.path())
        .env("GEMINI_API_KEY", "test-key-0123456789")
        .env("IMAGEPIPE_GEMINI_BASE_URL", &base)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (_held, _) = listener.accept().unwrap();
    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());

    let out = child.wait_with_output().unwrap();

    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!((report["rows"].as_u64(), report["failed"].as_u64()), (Some(2), Some(2)));
    let run_id = report["run_id"].as_str().unwrap();
    let stored = std::fs::read_to_string(dir.path().join(format!("out/runs/{run_id}/report.json"))).unwrap();
    assert!(stored.contains("\"stopped\": \"interrupted with Ctrl-C\""), "{stored}");
}
